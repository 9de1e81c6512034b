package pump

import (
	"os"
	"time"
)

// State is a parked pump: its descriptors (by number) and the bytes it
// read and had not written yet.
type State struct {
	Src, Dst    int
	Pending     []byte
	ProcessGone bool // the process has exited: the pump serves lingering writers
}

// Park stops the pump between two system calls, leaving src and dst open,
// and says what it held; ok is false if the pump had already ended (its
// descriptors are closed).
func (p *Pump) Park() (st State, ok bool) {
	p.parking.Store(true)
	p.stopping.Store(true)
	past := time.Unix(1, 0)
	_ = p.src.SetReadDeadline(past)
	_ = p.dst.SetWriteDeadline(past)
	<-p.done
	if p.finished {
		return State{}, false
	}
	_ = p.src.SetReadDeadline(time.Time{})
	_ = p.dst.SetWriteDeadline(time.Time{})
	return State{
		Src: p.sfd, Dst: p.dfd,
		Pending:     append([]byte(nil), p.pending...),
		ProcessGone: p.processGone.Load(),
	}, true
}

// Resumed starts a pump again where the parked pump p stopped, on its
// files, with its options.
func (p *Pump) Resumed() (*Pump, error) {
	st := State{Pending: p.pending, ProcessGone: p.processGone.Load()}
	np, err := Parked(p.src, p.dst, st, Options{KeepSrc: p.keepSrc, KeepDst: p.keepDst, OnEnd: p.onEnd})
	if err != nil {
		return nil, err
	}
	go np.Run()
	return np, nil
}

// Parked is a pump on src and dst in the parked state st (taken back by
// the next process), not running: start it with go p.Run().
func Parked(src, dst *os.File, st State, opts Options) (*Pump, error) {
	p, err := New(src, dst, opts)
	if err != nil {
		return nil, err
	}
	if len(st.Pending) > 0 {
		if p.splice {
			// A splice pump holds nothing; this one did (it was not one).
			p.splice = false
			p.buf = make([]byte, 32<<10)
		}
		p.pending = append(p.buf[:0], st.Pending...)
	}
	if st.ProcessGone {
		p.processGone.Store(true)
		p.drainOnce.Do(func() { close(p.drained) })
	}
	return p, nil
}
