package startover

import (
	"os"
	"testing"
	"time"
)

var limits = Limits{AtFirstQuiet: true, MinGrowthKiB: 512, MinGrowthRatio: 0.25, Interval: 2 * time.Minute}

func at(s int) time.Time { return time.Unix(int64(s), 0) }

// TestFirstQuiet: a new shim starts over at its first quiet moment; a
// failed attempt is not retried within the interval, nor without growth.
func TestFirstQuiet(t *testing.T) {
	w := New(limits)
	if !w.Quiet(at(100), 1900) {
		t.Fatal("no start over at the first quiet moment")
	}
	if w.Baseline() != 1900 {
		t.Fatalf("baseline %d, want 1900", w.Baseline())
	}
	if w.Quiet(at(101), 3000) {
		t.Fatal("a second attempt while the first is under way")
	}
	w.Done() // it failed
	if w.Quiet(at(160), 3000) {
		t.Fatal("a second attempt within the interval")
	}
	if w.Quiet(at(400), 2300) {
		t.Fatal("started over again without growing by 512 KiB")
	}
	if !w.Quiet(at(400), 2500) {
		t.Fatal("no start over at 2500 KiB over a baseline of 1900, past the interval")
	}
}

// TestCarried: a process that carries a shim on takes its baseline at its
// first quiet moment (after its first requests) without starting over,
// and starts over only past the interval counted from when it carried on.
func TestCarried(t *testing.T) {
	w := New(limits)
	w.Carried(at(1000))
	if w.Quiet(at(1001), 2700) {
		t.Fatal("a process that carries on started over at its first quiet moment")
	}
	if w.Quiet(at(1060), 3800) {
		t.Fatal("started over within the interval of carrying on")
	}
	if !w.Quiet(at(1200), 3800) {
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
		if got := w.Quiet(time.Time{}, c.anon); got != c.want {
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
