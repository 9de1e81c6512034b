package startover

import (
	"os"
	"testing"
	"time"
)

func TestQuiet(t *testing.T) {
	start := time.Unix(1000, 0)
	w := New(Limits{MinGrowthKiB: 1024, MinGrowthRatio: 0.5, Interval: time.Minute})
	at := func(d time.Duration) time.Time { return start.Add(d) }
	if w.Quiet(at(2*time.Minute), 1900) {
		t.Fatal("the first quiet moment is the baseline, not a start over")
	}
	if w.Baseline() != 1900 {
		t.Fatalf("baseline %d, want 1900", w.Baseline())
	}
	for _, c := range []struct {
		anon int
		at   time.Duration
		why  string
	}{
		{2900, 2 * time.Minute, "grown by less than a MiB"},
		{2800, 3 * time.Minute, "grown by less than a MiB"},
	} {
		if w.Quiet(at(c.at), c.anon) {
			t.Fatalf("started over at %d KiB after %v: %s", c.anon, c.at, c.why)
		}
	}
	if !w.Quiet(at(2*time.Minute), 4500) {
		t.Fatal("did not start over at 4500 KiB over a baseline of 1900")
	}
	if w.Quiet(at(10*time.Minute), 4500) {
		t.Fatal("a second attempt while the first is under way")
	}
	w.Done()
	if w.Quiet(at(2*time.Minute+30*time.Second), 4500) {
		t.Fatal("a second attempt within a minute of the first")
	}
	if !w.Quiet(at(4*time.Minute), 4500) {
		t.Fatal("no second attempt a minute after a failed one")
	}
}

// TestRatio: a large baseline must grow by half of itself, not only a MiB.
func TestRatio(t *testing.T) {
	w := New(Limits{MinGrowthKiB: 1024, MinGrowthRatio: 0.5})
	w.Quiet(time.Time{}, 4000)
	if w.Quiet(time.Time{}, 5500) {
		t.Fatal("started over at +1500 KiB over 4000 KiB")
	}
	if !w.Quiet(time.Time{}, 6000) {
		t.Fatal("no start over at +2000 KiB over 4000 KiB")
	}
}

func TestAnonKiB(t *testing.T) {
	kib, err := AnonKiB()
	if err != nil {
		t.Fatal(err)
	}
	// A Go test binary's runtime alone holds more than half a MiB.
	if kib < 512 {
		t.Fatalf("anonymous memory %d KiB", kib)
	}
}

func TestRunning(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if !Running(self) {
		t.Fatalf("%s is not the running binary", self)
	}
	if Running("/bin/sh") {
		t.Fatal("/bin/sh is the running binary")
	}
}

// TestSetBaseline: a process that carries on a shim measures its baseline
// before it serves, not at its first quiet moment, which may come after
// much work.
func TestSetBaseline(t *testing.T) {
	w := New(Limits{MinGrowthKiB: 1024, MinGrowthRatio: 0.5})
	w.SetBaseline(1500)
	if !w.Quiet(time.Time{}, 3000) {
		t.Fatal("no start over at 3000 KiB over a baseline of 1500 set before the first quiet moment")
	}
}

// TestAtFirstQuiet: a shim starts over at its first quiet moment, then only
// when it grew; a process that carries on has its baseline already.
func TestAtFirstQuiet(t *testing.T) {
	limits := Limits{AtFirstQuiet: true, MinGrowthKiB: 1024, MinGrowthRatio: 0.5, Interval: time.Minute}
	w := New(limits)
	if !w.Quiet(time.Unix(100, 0), 1900) {
		t.Fatal("no start over at the first quiet moment")
	}
	w.Done() // it failed
	if w.Quiet(time.Unix(300, 0), 2000) {
		t.Fatal("started over again without growing")
	}
	carried := New(limits)
	carried.SetBaseline(1500)
	if carried.Quiet(time.Unix(100, 0), 1600) {
		t.Fatal("a process that carries on started over at its first quiet moment")
	}
}
