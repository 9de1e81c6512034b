package cgroup

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHandoverAndAdopt: a watch handed over keeps its descriptor open and
// its count; a kill while nobody watched is reported once by the watch
// that adopts it (in the new shim process: here a second watcher).
func TestHandoverAndAdopt(t *testing.T) {
	cg, dir := fakeV2(t, "g")
	old := testWatcher(t)
	oom := make(chan struct{}, 8)
	h, err := old.Watch(cg, 0, notice(oom))
	if err != nil {
		t.Fatal(err)
	}
	setOOMKills(t, dir, 1)
	await(t, oom, "the first OOM kill")
	st, ok := h.Handover()
	if !ok || st.OOMKills != 1 || fdLink(st.FD) != "anon_inode:inotify" {
		t.Fatalf("handover %+v %v, descriptor %q", st, ok, fdLink(st.FD))
	}
	if _, ok := h.Handover(); ok {
		t.Fatal("a watch handed over twice")
	}
	h.Close() // must not close the handed-over descriptor
	if fdLink(st.FD) == "" {
		t.Fatal("Close after Handover closed the descriptor")
	}

	setOOMKills(t, dir, 2) // between the handover and the adoption
	// The new process's notifier, unwatched: reports that kill, once.
	n, err := cg.adoptNotifier(st)
	if err != nil {
		t.Fatal(err)
	}
	if c := n.check(); c.kills != 1 || c.gone {
		t.Fatalf("kill in between: %+v", c)
	}
	if c := n.check(); c.kills != 0 {
		t.Fatal("kill in between reported twice")
	}

	// And through a watcher (the caller had cleared close-on-exec).
	setOOMKills(t, dir, 3)
	unix.FcntlInt(uintptr(st.FD), unix.F_SETFD, 0)
	oom2 := make(chan struct{}, 8)
	h2, err := testWatcher(t).Adopt(cg, 0, OOMWatchState{FD: st.FD, OOMKills: 2}, notice(oom2))
	if err != nil {
		t.Fatal(err)
	}
	await(t, oom2, "the kill before the adoption")
	if flags, _ := unix.FcntlInt(uintptr(st.FD), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC == 0 {
		t.Error("adopted descriptor left without close-on-exec")
	}
	h2.Close()
	if fdLink(st.FD) == "anon_inode:inotify" {
		t.Error("adopted watch's Close left its descriptor open")
	}
}

// TestAdoptRefusesAnotherDescriptor: a state naming a descriptor that is
// not a notifier is refused, and that descriptor left alone.
func TestAdoptRefusesAnotherDescriptor(t *testing.T) {
	cg, _ := fakeV2(t, "g")
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := testWatcher(t).Adopt(cg, 0, OOMWatchState{FD: int(f.Fd())}, func() {}); err == nil {
		t.Fatal("adopted /dev/null as an oom notifier")
	}
	if fdLink(int(f.Fd())) != "/dev/null" {
		t.Fatal("refused descriptor was closed")
	}
}
