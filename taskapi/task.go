package taskapi

import (
	"cmp"
	"context"
	"os"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/tether-shim/tether/proto/runcopts"
	"github.com/tether-shim/tether/proto/task"
	tasktypes "github.com/tether-shim/tether/proto/types/task"
	"github.com/tether-shim/tether/shim"
)

var _ task.TaskService = (*Service)(nil)

var empty = &emptypb.Empty{}

func (s *Service) Create(ctx context.Context, r *task.CreateTaskRequest) (*task.CreateTaskResponse, error) {
	if err := shim.ValidateID("container", r.GetId()); err != nil {
		return nil, toStatus(err)
	}
	if err := s.checkNamespace(ctx); err != nil {
		return nil, toStatus(err)
	}
	if s.prepare != nil {
		if err := s.prepare(r.GetBundle()); err != nil {
			return nil, toStatus(err)
		}
	}
	c, err := s.containers.Create(ctx, r)
	if err != nil {
		return nil, toStatus(err)
	}
	return &task.CreateTaskResponse{Pid: uint32(c.Pid())}, nil
}

func (s *Service) Start(ctx context.Context, r *task.StartRequest) (*task.StartResponse, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	pid, err := c.Start(ctx, r.GetExecId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &task.StartResponse{Pid: uint32(pid)}, nil
}

func (s *Service) Delete(ctx context.Context, r *task.DeleteRequest) (*task.DeleteResponse, error) {
	if r.GetExecId() == "" {
		st, err := s.containers.Delete(ctx, r.GetId())
		if err != nil {
			return nil, toStatus(err)
		}
		return deleteResponse(st), nil
	}
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	st, err := c.DeleteExec(ctx, r.GetExecId())
	if err != nil {
		return nil, toStatus(err)
	}
	return deleteResponse(st), nil
}

func deleteResponse(st shim.ProcessState) *task.DeleteResponse {
	return &task.DeleteResponse{Pid: uint32(st.Pid), ExitStatus: uint32(st.ExitStatus), ExitedAt: timestamp(st.ExitedAt)}
}

func (s *Service) Exec(ctx context.Context, r *task.ExecProcessRequest) (*emptypb.Empty, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	if err := c.AddExec(r); err != nil {
		return nil, toStatus(err)
	}
	return empty, nil
}

func (s *Service) State(ctx context.Context, r *task.StateRequest) (*task.StateResponse, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	st, err := c.State(r.GetExecId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &task.StateResponse{
		Id:         cmp.Or(st.ID, c.ID), // the init is named by its container
		Bundle:     c.Bundle,
		Pid:        uint32(st.Pid),
		Status:     statusOf(st.State),
		Stdin:      st.Paths.Stdin,
		Stdout:     st.Paths.Stdout,
		Stderr:     st.Paths.Stderr,
		Terminal:   st.Paths.Terminal,
		ExitStatus: uint32(st.ExitStatus),
		ExitedAt:   timestamp(st.ExitedAt),
		ExecId:     r.GetExecId(),
	}, nil
}

func statusOf(s shim.State) tasktypes.Status {
	switch s {
	case shim.Created:
		return tasktypes.Status_CREATED
	case shim.Running:
		return tasktypes.Status_RUNNING
	case shim.Paused:
		return tasktypes.Status_PAUSED
	case shim.Stopped, shim.Deleted:
		return tasktypes.Status_STOPPED
	}
	return tasktypes.Status_UNKNOWN
}

func (s *Service) Kill(ctx context.Context, r *task.KillRequest) (*emptypb.Empty, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	if err := c.Kill(ctx, r.GetExecId(), r.GetSignal(), r.GetAll()); err != nil {
		return nil, toStatus(err)
	}
	return empty, nil
}

func (s *Service) Wait(ctx context.Context, r *task.WaitRequest) (*task.WaitResponse, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	status, at, err := c.Wait(ctx, r.GetExecId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &task.WaitResponse{ExitStatus: uint32(status), ExitedAt: timestamp(at)}, nil
}

func (s *Service) Pids(ctx context.Context, r *task.PidsRequest) (*task.PidsResponse, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	pids, err := c.Pids(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	execs := c.ExecPids()
	resp := &task.PidsResponse{}
	for _, pid := range pids {
		info := &tasktypes.ProcessInfo{Pid: uint32(pid)}
		if execID, ok := execs[pid]; ok {
			a, err := anypb.New(&runcopts.ProcessDetails{ExecId: execID})
			if err != nil {
				return nil, toStatus(err)
			}
			// containerd looks the type up by its bare full name.
			a.TypeUrl = "containerd.runc.v1.ProcessDetails"
			info.Info = a
		}
		resp.Processes = append(resp.Processes, info)
	}
	return resp, nil
}

func (s *Service) CloseIO(ctx context.Context, r *task.CloseIORequest) (*emptypb.Empty, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	if err := c.CloseIO(r.GetExecId(), r.GetStdin()); err != nil {
		return nil, toStatus(err)
	}
	return empty, nil
}

func (s *Service) ResizePty(ctx context.Context, r *task.ResizePtyRequest) (*emptypb.Empty, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	if err := c.Resize(r.GetExecId(), r.GetWidth(), r.GetHeight()); err != nil {
		return nil, toStatus(err)
	}
	return empty, nil
}

func (s *Service) Connect(ctx context.Context, r *task.ConnectRequest) (*task.ConnectResponse, error) {
	resp := &task.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: s.version}
	if c, err := s.containers.Get(r.GetId()); err == nil {
		resp.TaskPid = uint32(c.Pid())
	}
	return resp, nil
}

// Shutdown exits the shim once it has no container left and nothing else
// keeps it; while it has some (other containers of the same group, or the
// pod sandbox it holds) it stays, as containerd expects: containerd 2.x asks
// after every container of a pod it deletes.
func (s *Service) Shutdown(ctx context.Context, r *task.ShutdownRequest) (*emptypb.Empty, error) {
	if s.keep != nil && s.keep() {
		return empty, nil
	}
	// Close refuses while containers remain, those being created among them.
	if !s.containers.CloseIfEmpty() {
		return empty, nil
	}
	// The shim stops listening before it answers, so a start that comes
	// after this answer makes a new shim rather than joining this one.
	s.shutdown()
	return empty, nil
}

func (s *Service) Pause(ctx context.Context, r *task.PauseRequest) (*emptypb.Empty, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	if err := c.Pause(ctx); err != nil {
		return nil, toStatus(err)
	}
	return empty, nil
}

func (s *Service) Resume(ctx context.Context, r *task.ResumeRequest) (*emptypb.Empty, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	if err := c.Resume(ctx); err != nil {
		return nil, toStatus(err)
	}
	return empty, nil
}

func (s *Service) Checkpoint(ctx context.Context, r *task.CheckpointTaskRequest) (*emptypb.Empty, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	if err := c.Checkpoint(ctx, r.GetPath(), r.GetOptions()); err != nil {
		return nil, toStatus(err)
	}
	return empty, nil
}

func (s *Service) Update(ctx context.Context, r *task.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	if err := c.Update(ctx, r.GetResources()); err != nil {
		return nil, toStatus(err)
	}
	return empty, nil
}

func (s *Service) Stats(ctx context.Context, r *task.StatsRequest) (*task.StatsResponse, error) {
	c, err := s.containers.Get(r.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	stats, err := c.Stats()
	if err != nil {
		return nil, toStatus(err)
	}
	return &task.StatsResponse{Stats: stats}, nil
}
