package shim

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// State is where a process is in its life. Init and exec processes share it;
// only the init can be paused.
type State int

const (
	// unborn is a process that is still being created: only opCreate moves
	// it on.
	unborn State = iota
	Created
	Running
	Paused
	Stopped
	Deleted
)

func (s State) String() string {
	switch s {
	case unborn:
		return "unborn"
	case Created:
		return "created"
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Stopped:
		return "stopped"
	case Deleted:
		return "deleted"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// op is something done to a process. Some ops move it to another state, the
// rest only need it to be in a state that allows them.
type op string

const (
	opCreate op = "create"
	opStart  op = "start"
	opPause  op = "pause"
	opResume op = "resume"
	opExit   op = "exit"
	opDelete op = "delete"
	opKill   op = "kill"
	opExec   op = "exec in"
	opResize op = "resize"
	opUpdate op = "update"
	opDump   op = "checkpoint"
)

// transitions is the one table of what each state allows and where it leads.
var transitions = map[State]map[op]State{
	unborn:  {opCreate: Created},
	Created: {opStart: Running, opExit: Stopped, opDelete: Deleted, opKill: Created, opExec: Created, opResize: Created, opUpdate: Created},
	Running: {opPause: Paused, opExit: Stopped, opKill: Running, opExec: Running, opResize: Running, opUpdate: Running, opDump: Running},
	Paused:  {opResume: Running, opExit: Stopped, opKill: Paused, opResize: Paused, opUpdate: Paused, opDump: Paused},
	Stopped: {opDelete: Deleted},
}

// next returns the state o leads to from s, or why o is not allowed.
func (s State) next(o op) (State, error) {
	if to, ok := transitions[s][o]; ok {
		return to, nil
	}
	switch {
	case s == Deleted:
		return s, fmt.Errorf("cannot %s a deleted process: %w", o, errdefs.ErrNotFound)
	case s == Stopped && o == opKill:
		// containerd treats NotFound from kill as "already gone".
		return s, fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return s, fmt.Errorf("cannot %s a %s process: %w", o, s, errdefs.ErrFailedPrecondition)
}
