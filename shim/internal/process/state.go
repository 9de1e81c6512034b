package process

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// State is where a process is in its life. Init and exec processes share it;
// only the init can be paused.
type State int

const (
	// unborn is a process that is still being created: only OpCreate moves
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

// Op is something done to a process. Some ops move it to another state, the
// rest only need it to be in a state that allows them.
type Op string

const (
	OpCreate Op = "create"
	OpStart  Op = "start"
	OpPause  Op = "pause"
	OpResume Op = "resume"
	OpExit   Op = "exit"
	OpDelete Op = "delete"
	OpKill   Op = "kill"
	OpExec   Op = "exec in"
	OpResize Op = "resize"
	OpUpdate Op = "update"
	OpDump   Op = "checkpoint"
)

// transitions is the one table of what each state allows and where it leads.
var transitions = map[State]map[Op]State{
	unborn:  {OpCreate: Created},
	Created: {OpStart: Running, OpExit: Stopped, OpDelete: Deleted, OpKill: Created, OpExec: Created, OpResize: Created, OpUpdate: Created},
	Running: {OpPause: Paused, OpExit: Stopped, OpKill: Running, OpExec: Running, OpResize: Running, OpUpdate: Running, OpDump: Running},
	Paused:  {OpResume: Running, OpExit: Stopped, OpKill: Paused, OpResize: Paused, OpUpdate: Paused, OpDump: Paused},
	Stopped: {OpDelete: Deleted},
}

// next returns the state o leads to from s, or why o is not allowed.
func (s State) next(o Op) (State, error) {
	if to, ok := transitions[s][o]; ok {
		return to, nil
	}
	switch {
	case s == Deleted:
		return s, fmt.Errorf("cannot %s a deleted process: %w", o, errdefs.ErrNotFound)
	case s == Stopped && o == OpKill:
		// containerd treats NotFound from kill as "already gone".
		return s, fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return s, fmt.Errorf("cannot %s a %s process: %w", o, s, errdefs.ErrFailedPrecondition)
}
