package shim

import (
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/events"
	eventtypes "github.com/tether-shim/tether/proto/events"
)

// announcer publishes the event that announces a process's transition by o
// (image is where a checkpoint went). A process calls it from commit, under
// its lock, so events leave in the order of the transitions.
type announcer func(st ProcessState, o op, image string)

// announcerFor returns the announcer of c's init (empty execID) or exec.
func (c *Container) announcerFor(execID string) announcer {
	return func(st ProcessState, o op, image string) {
		if topic, ev := c.eventFor(execID, st, o, image); ev != nil {
			c.env.Events.Publish(topic, ev)
		}
	}
}

// eventFor is the one place where a process's transitions become task
// events, as containerd's runc shim names them. Transitions without an event
// (an exec's delete) return nil.
func (c *Container) eventFor(execID string, st ProcessState, o op, image string) (string, proto.Message) {
	init := execID == ""
	switch {
	case o == opCreate && init:
		paths := st.Paths
		return events.TopicCreate, &eventtypes.TaskCreate{
			ContainerId: c.ID,
			Bundle:      c.Bundle,
			Rootfs:      c.mounts,
			Io:          &eventtypes.TaskIO{Stdin: paths.Stdin, Stdout: paths.Stdout, Stderr: paths.Stderr, Terminal: paths.Terminal},
			Checkpoint:  c.checkpoint,
			Pid:         uint32(st.Pid),
		}
	case o == opCreate:
		return events.TopicExecAdded, &eventtypes.TaskExecAdded{ContainerId: c.ID, ExecId: execID}
	case o == opStart && init:
		return events.TopicStart, &eventtypes.TaskStart{ContainerId: c.ID, Pid: uint32(st.Pid)}
	case o == opStart:
		return events.TopicExecStarted, &eventtypes.TaskExecStarted{ContainerId: c.ID, ExecId: execID, Pid: uint32(st.Pid)}
	case o == opExit:
		id := execID
		if init {
			id = c.ID
		}
		return events.TopicExit, &eventtypes.TaskExit{
			ContainerId: c.ID, Id: id, Pid: uint32(st.Pid),
			ExitStatus: uint32(st.ExitStatus), ExitedAt: timestamppb.New(st.ExitedAt),
		}
	case o == opDelete && init:
		return events.TopicDelete, &eventtypes.TaskDelete{
			ContainerId: c.ID, Pid: uint32(st.Pid),
			ExitStatus: uint32(st.ExitStatus), ExitedAt: timestamp(st.ExitedAt),
		}
	case o == opPause:
		return events.TopicPaused, &eventtypes.TaskPaused{ContainerId: c.ID}
	case o == opResume:
		return events.TopicResumed, &eventtypes.TaskResumed{ContainerId: c.ID}
	case o == opDump:
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
