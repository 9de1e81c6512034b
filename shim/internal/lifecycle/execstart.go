package lifecycle

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/fdpass"
	"github.com/tether-shim/tether/oci"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim/internal/process"
	"github.com/tether-shim/tether/stdio"
)

// An exec's start can be carried over by a live upgrade while its runtime
// call runs: the Start request waits in carry.Hold, and when the upgrade
// settles it keeps the call's exit for the next process (keep), writes the
// start down with the exec's stdio (HandoverStart) and carries the Start
// request over; the next process owns the runtime's process, finishes the
// start once it ends (ResumeStart) and answers the Start. So an upgrade
// need not wait for the runtime calls of an exec storm.

// execStart is an exec's start whose runtime call is in flight.
type execStart struct {
	call    oci.Call
	pio     *stdio.IO
	pidFile string
	watch   *reaper.Watch
	// kept says a live upgrade keeps the call's exit for the next process,
	// handedOver that pio is written down for it. Guarded by the
	// Exec's mu.
	kept, handedOver bool
	// processFile is the runtime's process spec file, and runtime a
	// pidfd of the runtime's process (-1: none), in the next process.
	processFile string
	runtime     int
}

// setStarting records (or, nil, forgets) the exec's start in flight.
func (l *Exec) setStarting(s *execStart) {
	l.mu.Lock()
	l.starting = s
	l.mu.Unlock()
}

// keep keeps the exit of the exec's runtime call in flight for the next
// process (carry.Hold's keep): not before the call runs with the exec's
// stdio in hand, never for a terminal, and only for a next process that
// takes starts over (shim's Table.CarryStarts).
func (l *Exec) keep() (release func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.starting
	if s == nil || !s.pio.Movable() || !l.c.CarryStarts.Load() {
		return nil, false
	}
	releaseCall, ok := l.c.Reaper.Keep(s.call.Pid)
	if !ok {
		return nil, false
	}
	s.kept = true
	return func() {
		l.mu.Lock()
		s.kept = false
		l.mu.Unlock()
		releaseCall()
	}, true
}

// HandoverStart writes the exec's start in flight down, if the upgrade
// keeps its runtime call's exit; nil if none is in flight. A start in
// flight that is not kept (its request was not carried: its client went)
// is waited for, within ctx.
func (l *Exec) HandoverStart(ctx context.Context, p *process.Process) (*upgradepb.StartInFlight, error) {
	l.mu.Lock()
	s := l.starting
	kept := s != nil && s.kept
	l.mu.Unlock()
	if s == nil {
		return nil, nil
	}
	if !kept {
		if err := p.SettleWithin(ctx); err != nil {
			return nil, fmt.Errorf("an exec being started: %w", err)
		}
		return nil, nil
	}
	ios, err := s.pio.Handover()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	s.handedOver = true
	l.mu.Unlock()
	return &upgradepb.StartInFlight{
		RuntimePid: int32(s.call.Pid), RuntimeLog: s.call.Log, PidFile: s.pidFile,
		DeadlineUnixNs: s.call.Deadline.UnixNano(), Io: process.IOToProto(ios), ProcessFile: oci.ProcessFile(s.call.Pid),
	}, nil
}

// TakeBackStart undoes HandoverStart: the start's stdio goes on here. On
// a restored exec it sets the carried start's stdio going.
func (l *Exec) TakeBackStart() {
	l.mu.Lock()
	s := l.starting
	resume := s != nil && s.handedOver
	if resume {
		s.handedOver = false
	}
	l.mu.Unlock()
	if resume {
		if err := s.pio.Resume(); err != nil {
			l.c.Log.Error("restart an exec's stdio after a handover", "container", l.c.ID, "error", err)
		}
	}
}

// ResumeStart takes over the start of exec p that a previous process of
// the shim wrote down in flight: the runtime's process is owned again, and
// once it ends the start is finished here, as Start would have (before
// the take-back is complete nothing runs: its exit comes after).
func (l *Exec) ResumeStart(p *process.Process, st *upgradepb.StartInFlight) (err error) {
	c := l.c
	defer func() {
		if err != nil {
			// Never started again: its Start answers why.
			p.ResumeStart(func() (process.Started, error) {
				c.Host.ExecGone()
				return process.Started{}, err
			})
		}
	}()
	pio, err := stdio.Restore(p.Paths(), process.IOFromProto(st.GetIo()), c.Host.AdoptCommand)
	if err != nil {
		return fmt.Errorf("exec %s being started: stdio: %w", p.ExecID(), err)
	}
	s := &execStart{
		call: oci.Call{Pid: int(st.GetRuntimePid()), Log: st.GetRuntimeLog(), Deadline: time.Unix(0, st.GetDeadlineUnixNs())},
		pio:  pio, pidFile: st.GetPidFile(), processFile: st.GetProcessFile(),
		watch:      c.Reaper.Watch(), // before the kept exits are delivered
		handedOver: true,
		// Not reaped before the take-back is complete: still this pid's.
		runtime: openPidfd(int(st.GetRuntimePid())),
	}
	ended := make(chan reaper.Exit, 1)
	if err := c.Reaper.Own(s.call.Pid, func(e reaper.Exit) { ended <- e }); err != nil {
		s.watch.Close()
		fdpass.Close(s.runtime)
		pio.Close()
		return fmt.Errorf("exec %s being started: own the runtime's process: %w", p.ExecID(), err)
	}
	l.setStarting(s)
	p.ResumeStart(func() (process.Started, error) { return l.finishStart(p, s, ended) })
	return nil
}

// finishStart waits for a carried start's runtime call to end (killing it
// at its deadline, as the call would have been) and finishes the start.
func (l *Exec) finishStart(p *process.Process, s *execStart, ended <-chan reaper.Exit) (_ process.Started, err error) {
	c := l.c
	defer func() {
		l.setStarting(nil)
		s.watch.Close()
		fdpass.Close(s.runtime)
		os.Remove(s.pidFile)
		if s.processFile != "" {
			os.Remove(s.processFile)
		}
		if err != nil {
			s.pio.Close()
			c.Host.ExecGone()
		}
	}()
	var e reaper.Exit
	select {
	case e = <-ended:
	case <-time.After(time.Until(s.call.Deadline)):
		if s.runtime >= 0 {
			unix.PidfdSendSignal(s.runtime, unix.SIGKILL, nil, 0)
		}
		e = <-ended
	}
	if err := c.Runtime.CallResult("exec", s.call, e.Status); err != nil {
		return process.Started{}, err
	}
	return l.started(p, s.pio, s.watch, s.pidFile)
}
