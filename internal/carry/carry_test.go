package carry

import (
	"context"
	"errors"
	"testing"
)

// point is a Point whose Unpark says "again" a number of times.
type point struct {
	parked, again int
}

func (p *point) Park(func() (func(), bool)) uint64 { p.parked++; return uint64(p.parked) }

func (p *point) Ready() {}

func (p *point) Unpark(uint64) bool {
	if p.again > 0 {
		p.again--
		return true
	}
	return false
}

// TestWaitAgainAfterAnAbandonedUpgrade: without a point a wait runs once;
// with one it is parked, and waited again as often as an upgrade cut it
// short; its result is the last wait's.
func TestWaitAgainAfterAnAbandonedUpgrade(t *testing.T) {
	runs := 0
	wait := func() error { runs++; return errors.New("done") }
	if err := Wait(context.Background(), wait); err == nil || runs != 1 {
		t.Fatalf("without a point: %v after %d runs", err, runs)
	}
	p := &point{again: 2}
	runs = 0
	if err := Wait(With(context.Background(), p), wait); err == nil || runs != 3 || p.parked != 3 {
		t.Fatalf("with a point cut short twice: %v after %d runs, %d parks", err, runs, p.parked)
	}
}
