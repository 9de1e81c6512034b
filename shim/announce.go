package shim

import (
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/events"
	eventtypes "github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/shim/internal/process"
)

// announcerFor returns the announcer of c's init (empty execID) or exec: it
// publishes the event each transition of the process is announced with.
func (c *Container) announcerFor(execID string) process.Announcer {
	return func(st ProcessState, o process.Op, image string) {
		if topic, ev := c.eventFor(execID, st, o, image); ev != nil {
			c.env.Events.Publish(topic, ev)
		}
	}
}

// eventFor is the one place where a process's transitions become task
// events, as containerd's runc shim names them. Transitions without an event
// (an exec's delete) return nil.
func (c *Container) eventFor(execID string, st ProcessState, o process.Op, image string) (string, proto.Message) {
	init := execID == ""
	switch {
	case o == process.OpCreate && init:
		paths := st.Paths
		return events.TopicCreate, &eventtypes.TaskCreate{
			ContainerId: c.ID,
			Bundle:      c.Bundle,
			Rootfs:      c.mounts,
			Io:          &eventtypes.TaskIO{Stdin: paths.Stdin, Stdout: paths.Stdout, Stderr: paths.Stderr, Terminal: paths.Terminal},
			Checkpoint:  c.life.Checkpoint,
			Pid:         uint32(st.Pid),
		}
	case o == process.OpCreate:
		return events.TopicExecAdded, &eventtypes.TaskExecAdded{ContainerId: c.ID, ExecId: execID}
	case o == process.OpStart && init:
		return events.TopicStart, &eventtypes.TaskStart{ContainerId: c.ID, Pid: uint32(st.Pid)}
	case o == process.OpStart:
		return events.TopicExecStarted, &eventtypes.TaskExecStarted{ContainerId: c.ID, ExecId: execID, Pid: uint32(st.Pid)}
	case o == process.OpExit:
		id := execID
		if init {
			id = c.ID
		}
		return events.TopicExit, &eventtypes.TaskExit{
			ContainerId: c.ID, Id: id, Pid: uint32(st.Pid),
			ExitStatus: uint32(st.ExitStatus), ExitedAt: timestamppb.New(st.ExitedAt),
		}
	case o == process.OpDelete && init:
		return events.TopicDelete, &eventtypes.TaskDelete{
			ContainerId: c.ID, Pid: uint32(st.Pid),
			ExitStatus: uint32(st.ExitStatus), ExitedAt: timestamp(st.ExitedAt),
		}
	case o == process.OpPause:
		return events.TopicPaused, &eventtypes.TaskPaused{ContainerId: c.ID}
	case o == process.OpResume:
		return events.TopicResumed, &eventtypes.TaskResumed{ContainerId: c.ID}
	case o == process.OpDump:
		return events.TopicCheckpointed, &eventtypes.TaskCheckpointed{ContainerId: c.ID, Checkpoint: image}
	}
	return "", nil
}

// timestamp leaves a zero time out, as containerd reads a missing time as zero.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
