package startover

import (
	"testing"
	"time"
)

var limits = Limits{AtFirstQuiet: true, MinGrowthKiB: 512, MinGrowthRatio: 0.25, Interval: 2 * time.Minute}

// due is Quiet's first answer.
func due(w *Watch, now time.Time, anon int) bool {
	d, _ := w.Quiet(now, anon)
	return d
}

func at(s int) time.Time { return time.Unix(int64(s), 0) }

// TestFirstQuiet: a new shim starts over at its first quiet moment; a
// failed attempt is not retried within the interval, nor without growth.
func TestFirstQuiet(t *testing.T) {
	w := New(limits)
	if !due(w, at(100), 1900) {
		t.Fatal("no start over at the first quiet moment")
	}
	if w.Baseline() != 1900 {
		t.Fatalf("baseline %d, want 1900", w.Baseline())
	}
	if due(w, at(101), 3000) {
		t.Fatal("a second attempt while the first is under way")
	}
	w.Done() // it failed
	if due(w, at(160), 3000) {
		t.Fatal("a second attempt within the interval")
	}
	if due(w, at(400), 2300) {
		t.Fatal("started over again without growing by 512 KiB")
	}
	if !due(w, at(400), 2500) {
		t.Fatal("no start over at 2500 KiB over a baseline of 1900, past the interval")
	}
}

// TestCarried: a process that carries a shim on takes its baseline at its
// first quiet moment (after its first requests) without starting over,
// and starts over only past the interval counted from when it carried on.
func TestCarried(t *testing.T) {
	w := New(limits)
	w.Carried(at(1000), 0)
	if due(w, at(1001), 2700) {
		t.Fatal("a process that carries on started over at its first quiet moment")
	}
	if d, retry := w.Quiet(at(1060), 3800); d || retry != 60*time.Second {
		t.Fatalf("within the interval of carrying on: start over %v, retry in %v; want a retry in 60s", d, retry)
	}
	if _, retry := w.Quiet(at(1070), 3800); retry != 0 {
		t.Fatal("a second retry while one is pending")
	}
	w.Retry()
	if !due(w, at(1200), 3800) {
		t.Fatal("no start over at 3800 KiB over 2700, past the interval")
	}
}

// TestGrowthLimits: both the size and the ratio must be exceeded.
func TestGrowthLimits(t *testing.T) {
	for _, c := range []struct {
		baseline, anon int
		want           bool
	}{
		{1500, 2000, false}, // +500 KiB
		{1500, 2100, true},  // +600 KiB, +40 %
		{4000, 4600, false}, // +600 KiB, +15 %
		{4000, 5100, true},  // +1100 KiB, +27 %
	} {
		w := New(Limits{MinGrowthKiB: 512, MinGrowthRatio: 0.25})
		w.Quiet(time.Time{}, c.baseline)
		if got := due(w, time.Time{}, c.anon); got != c.want {
			t.Errorf("%d KiB over a baseline of %d: start over %v, want %v", c.anon, c.baseline, got, c.want)
		}
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

// TestHanded: a carried baseline goes on to the next process, so a quiet
// moment during work there (an output stream) does not become its
// baseline; a new shim's (before its start over) does not.
func TestHanded(t *testing.T) {
	w := New(limits)
	due(w, at(0), 1900)
	if w.Handed() != 0 {
		t.Fatal("a new shim handed its baseline from before its start over")
	}
	next := New(limits)
	next.Carried(at(10), 0)
	due(next, at(12), 1500)
	if next.Handed() != 1500 {
		t.Fatalf("handed %d, want 1500", next.Handed())
	}
	third := New(limits)
	third.Carried(at(200), next.Handed())
	if d, _ := third.Quiet(at(400), 2400); !d {
		t.Fatal("no start over at 2400 KiB over a handed baseline of 1500")
	}
}

// TestAlways: the start-over test's limits are due at every quiet moment
// after the baseline, also one below it (a trim can leave a shim there),
// but never while an attempt is under way.
func TestAlways(t *testing.T) {
	w := New(Limits{Always: true})
	w.Carried(at(0), 0)
	if due(w, at(1), 2000) {
		t.Fatal("a carried shim started over at its first quiet moment")
	}
	if !due(w, at(2), 1800) {
		t.Fatal("no start over below the baseline")
	}
	if due(w, at(3), 2500) {
		t.Fatal("a second attempt while the first is under way")
	}
	w.Done()
	if !due(w, at(4), 2500) {
		t.Fatal("no start over after a failed attempt")
	}
}
