package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/kmsg"
)

// initPid is the fake container's init in the fake kernel log.
const initPid = 4242

// counter counts a watch's OOM notices, synchronously (a Flush's notice is
// in before Flush returns).
type counter struct{ ch chan struct{} }

func newCounter() *counter    { return &counter{ch: make(chan struct{}, 16)} }
func (c *counter) onOOM()     { c.ch <- struct{}{} }
func (c *counter) count() int { return len(c.ch) }

// removeGroup removes a fake group as systemd removes an emptied scope,
// and waits for the watcher to end the watch.
func removeGroup(t *testing.T, h *OOMWatch, dir string) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	await(t, h.ended, "the watch of the removed cgroup to end")
}

// TestFlushReportsAKillWhoseCgroupWentFirst is the lost OOM of a systemd
// scope: the kernel counted the kill of the container's init, but its
// notice of memory.events never came (rate-limited, then dropped with the
// cgroup); systemd removed the emptied scope. The watch alone reports
// nothing, as tether did before Flush; Flush finds the kill in the
// kernel's log, before it returns, and reports it once.
func TestFlushReportsAKillWhoseCgroupWentFirst(t *testing.T) {
	w, klog := testWatcherWithLog(t)
	cg, dir := fakeV2(t, "scope")
	oom := newCounter()
	h, err := w.Watch(cg, initPid, oom.onOOM)
	if err != nil {
		t.Fatal(err)
	}
	klog.add(kmsg.Kill{Pid: initPid})
	removeGroup(t, h, dir)
	if oom.count() != 0 {
		t.Fatalf("%d OOM notices from a cgroup whose count never changed", oom.count())
	}
	h.Flush()
	if oom.count() != 1 {
		t.Fatalf("%d OOM notices after Flush, want the kill in the kernel's log", oom.count())
	}
	h.Flush()
	h.Close()
	if oom.count() != 1 {
		t.Fatalf("%d OOM notices after a second Flush", oom.count())
	}
}

// TestFlushReportsACountedKillBeforeItReturns: the kernel counted a kill
// the watcher has not read yet (its notice comes up to 10 ms late): after
// Flush, which the exit path calls before it publishes the init's exit,
// it is reported, and once only, whoever reads it first.
func TestFlushReportsACountedKillBeforeItReturns(t *testing.T) {
	w, klog := testWatcherWithLog(t)
	cg, dir := fakeV2(t, "g")
	oom := newCounter()
	h, err := w.Watch(cg, initPid, oom.onOOM)
	if err != nil {
		t.Fatal(err)
	}
	setOOMKills(t, dir, 1)
	h.Flush()
	if oom.count() != 1 {
		t.Fatalf("%d OOM notices when Flush returned, want the counted kill", oom.count())
	}
	setOOMKills(t, dir, 2)
	h.Flush()
	klog.add(kmsg.Kill{Pid: initPid})
	klog.add(kmsg.Kill{Pid: initPid + 1, Cgroup: "/g"})
	removeGroup(t, h, dir)
	h.Flush()
	if n := oom.count(); n != 2 {
		t.Fatalf("%d OOM notices for 2 kills", n)
	}
}

// TestFlushDoesNotRepeatWhatTheWatchReported: a kill the watch reported
// from the count is in the kernel's log too; Flush after the cgroup went
// reports nothing more.
func TestFlushDoesNotRepeatWhatTheWatchReported(t *testing.T) {
	w, klog := testWatcherWithLog(t)
	cg, dir := fakeV2(t, "g")
	oom := newCounter()
	h, err := w.Watch(cg, initPid, oom.onOOM)
	if err != nil {
		t.Fatal(err)
	}
	setOOMKills(t, dir, 1)
	await(t, oom.ch, "the counted kill")
	klog.add(kmsg.Kill{Pid: initPid, Cgroup: "/g"})
	klog.add(kmsg.Kill{Pid: initPid})
	removeGroup(t, h, dir)
	h.Flush()
	if oom.count() != 0 {
		t.Fatalf("the kill was reported again")
	}
	if klog.readCount() != 1 {
		t.Fatalf("the kernel's log read %d times, want once (the cgroup went before it was seen empty)", klog.readCount())
	}
}

// TestFlushIgnoresKillsBeforeTheWatch: a kill of a process that had the
// init's pid before it (the pid used again), or of anything before the
// watch began, is not the container's.
func TestFlushIgnoresKillsBeforeTheWatch(t *testing.T) {
	w, klog := testWatcherWithLog(t)
	cg, dir := fakeV2(t, "g")
	klog.add(kmsg.Kill{Pid: initPid})
	klog.add(kmsg.Kill{Pid: 7, Cgroup: "/g"})
	oom := newCounter()
	h, err := w.Watch(cg, initPid, oom.onOOM)
	if err != nil {
		t.Fatal(err)
	}
	klog.add(kmsg.Kill{Pid: 99, Cgroup: "/another"})
	removeGroup(t, h, dir)
	h.Flush()
	if oom.count() != 0 {
		t.Fatalf("%d OOM notices from kills that were not the container's", oom.count())
	}
}

// TestFlushFindsKillsByCgroup: a child's kill (its pid unknown to the
// shim) is the container's when the record names the container's cgroup;
// so is a group kill of it (memory.oom.group).
func TestFlushFindsKillsByCgroup(t *testing.T) {
	for name, kill := range map[string]kmsg.Kill{
		"summary": {Pid: 31337, Cgroup: "/g"},
		"group":   {Cgroup: "/g", Group: true},
	} {
		t.Run(name, func(t *testing.T) {
			w, klog := testWatcherWithLog(t)
			cg, dir := fakeV2(t, "g")
			oom := newCounter()
			h, err := w.Watch(cg, initPid, oom.onOOM)
			if err != nil {
				t.Fatal(err)
			}
			klog.add(kill)
			removeGroup(t, h, dir)
			h.Flush()
			if oom.count() != 1 {
				t.Fatalf("%d OOM notices for %+v", oom.count(), kill)
			}
		})
	}
}

// TestFlushOfAnEmptiedCgroupNeedsNoLog: a count read once the cgroup was
// empty is final: after the cgroup goes, Flush does not read the kernel's
// log.
func TestFlushOfAnEmptiedCgroupNeedsNoLog(t *testing.T) {
	w, klog := testWatcherWithLog(t)
	cg, dir := fakeV2(t, "g")
	oom := newCounter()
	h, err := w.Watch(cg, initPid, oom.onOOM)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "cgroup.events"), []byte("populated 0\nfrozen 0\n"), 0o644)
	h.Flush() // the init's exit: the cgroup is empty, still there
	removeGroup(t, h, dir)
	h.Flush()
	if klog.readCount() != 0 || oom.count() != 0 {
		t.Fatalf("kernel log read %d times, %d OOM notices", klog.readCount(), oom.count())
	}
}

// TestFlushWithoutTheKernelLog: a kernel log that cannot be read (no
// CAP_SYSLOG) leaves the watch as it was: it watches and counts, and
// Flush reads the count.
func TestFlushWithoutTheKernelLog(t *testing.T) {
	w, klog := testWatcherWithLog(t)
	klog.err = errors.New("operation not permitted")
	cg, dir := fakeV2(t, "g")
	oom := newCounter()
	h, err := w.Watch(cg, initPid, oom.onOOM)
	if err != nil {
		t.Fatal(err)
	}
	setOOMKills(t, dir, 1)
	h.Flush()
	removeGroup(t, h, dir)
	h.Flush()
	if oom.count() != 1 || klog.readCount() != 0 {
		t.Fatalf("%d OOM notices, kernel log read %d times", oom.count(), klog.readCount())
	}
}

// TestFlushAfterCloseDoesNothing: a deleted container's watch reports
// nothing more.
func TestFlushAfterCloseDoesNothing(t *testing.T) {
	w, klog := testWatcherWithLog(t)
	cg, dir := fakeV2(t, "g")
	oom := newCounter()
	h, err := w.Watch(cg, initPid, oom.onOOM)
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	setOOMKills(t, dir, 1)
	klog.add(kmsg.Kill{Pid: initPid})
	h.Flush()
	if oom.count() != 0 || klog.readCount() != 0 {
		t.Fatalf("%d OOM notices, kernel log read %d times after Close", oom.count(), klog.readCount())
	}
}

// TestHandoverCarriesTheMark: a watch handed over to a new shim process
// keeps its place in the kernel's log and what it reported: the new
// process reports a kill from before the handover that the old one had
// not, and not one the old one had.
func TestHandoverCarriesTheMark(t *testing.T) {
	old, klog := testWatcherWithLog(t)
	cg, dir := fakeV2(t, "g")
	oom := newCounter()
	h, err := old.Watch(cg, initPid, oom.onOOM)
	if err != nil {
		t.Fatal(err)
	}
	setOOMKills(t, dir, 1)
	h.Flush()
	klog.add(kmsg.Kill{Pid: initPid + 1, Cgroup: "/g"}) // the counted kill
	st, ok := h.Handover()
	if !ok || st.LogMark == nil || st.LogMark.Usec != 0 || st.Reported != 1 {
		t.Fatalf("handover %+v %v", st, ok)
	}
	klog.add(kmsg.Kill{Pid: initPid}) // during the handover; the scope goes
	os.RemoveAll(dir)

	renew := NewOOMWatcher(old.log, klog)
	oom2 := newCounter()
	h2, err := renew.Adopt(fakeCgroupAt(t, dir), initPid, st, oom2.onOOM)
	if err == nil {
		defer h2.Close()
		h2.Flush()
	} else {
		unix.Close(st.FD)
		t.Fatalf("adopt: %v", err)
	}
	if oom2.count() != 1 {
		t.Fatalf("%d OOM notices in the new process, want the kill during the handover", oom2.count())
	}
}

// fakeCgroupAt is a v2 cgroup at dir, which may be gone, below its parent
// as the hierarchy's root.
func fakeCgroupAt(t *testing.T, dir string) Cgroup {
	t.Helper()
	return &v2{dir: dir, root: filepath.Dir(dir)}
}
