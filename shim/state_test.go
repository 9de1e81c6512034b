package shim

import (
	"errors"
	"testing"
)

// TestTransitions checks the whole table: every state against every op.
func TestTransitions(t *testing.T) {
	ops := []op{opStart, opPause, opResume, opExit, opDelete, opKill, opExec, opResize, opUpdate, opDump}
	want := map[State]map[op]State{
		Created: {opStart: Running, opExit: Stopped, opDelete: Deleted, opKill: Created, opExec: Created, opResize: Created, opUpdate: Created},
		Running: {opPause: Paused, opExit: Stopped, opKill: Running, opExec: Running, opResize: Running, opUpdate: Running, opDump: Running},
		Paused:  {opResume: Running, opExit: Stopped, opKill: Paused, opResize: Paused, opUpdate: Paused, opDump: Paused},
		Stopped: {opDelete: Deleted},
		Deleted: {},
	}
	for from, allowed := range want {
		for _, o := range ops {
			to, err := from.next(o)
			if exp, ok := allowed[o]; ok {
				if err != nil || to != exp {
					t.Errorf("%s --%s--> %s, %v; want %s", from, o, to, err, exp)
				}
				continue
			}
			if err == nil {
				t.Errorf("%s --%s--> %s allowed; want refused", from, o, to)
				continue
			}
			wantErr := ErrFailedPrecondition
			if from == Deleted || (from == Stopped && o == opKill) {
				wantErr = ErrNotFound
			}
			if !errors.Is(err, wantErr) {
				t.Errorf("%s --%s--> error %v; want %v", from, o, err, wantErr)
			}
			if to != from {
				t.Errorf("%s --%s--> refused but moved to %s", from, o, to)
			}
		}
	}
}
