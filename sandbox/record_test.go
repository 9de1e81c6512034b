package sandbox

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox/internal/podfiles"
	"github.com/tether-shim/tether/sandbox/internal/podns"
)

// TestCleanupAfterALostShim: the delete action kills the recorded holder
// (here a stand-in child) and waits for it, removes the pod's files and
// the record; a holder whose exit is recorded, or whose pid now names
// another process, is left alone.
func TestCleanupAfterALostShim(t *testing.T) {
	bundle := t.TempDir()
	if exit, ok, err := Cleanup(context.Background(), bundle); exit != nil || ok || err != nil {
		t.Fatalf("no record: %v %v %v", exit, ok, err)
	}
	files, err := podfiles.Find(containerdLayout(t, t.TempDir(), t.TempDir(), "pod1"), "pod1")
	if err != nil {
		t.Fatal(err)
	}
	if err := files.SetUp(podfiles.Config{}); err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("sleep", "1000")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- holder.Wait() }()
	t.Cleanup(func() { holder.Process.Kill() })
	rec := newRecorder(bundle, slog.New(slog.DiscardHandler))
	rec.update(func(r *record) {
		r.HolderPid, r.HolderStart, r.Files = holder.Process.Pid, startTime(holder.Process.Pid)+1, files
	})
	// A start time that differs: another process has the pid now.
	if _, ok, err := Cleanup(context.Background(), bundle); !ok || err != nil {
		t.Fatalf("cleanup: %v %v", ok, err)
	}
	select {
	case err := <-waited:
		t.Fatalf("a process that is not the holder was killed: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	rec.update(func(r *record) { r.HolderStart = startTime(holder.Process.Pid) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exit, ok, err := Cleanup(ctx, bundle)
	if !ok || err != nil || exit != nil {
		t.Fatalf("cleanup: %v %v %v", exit, ok, err)
	}
	if err := <-waited; err == nil {
		t.Fatal("holder not killed")
	}
	for _, path := range []string{files.RootDir, files.StateDir, filepath.Join(bundle, RecordFile)} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", path, err)
		}
	}

	// The exit is in: reported, and no signal goes to its pid.
	at := time.Unix(1700000000, 0)
	data, _ := json.Marshal(record{HolderPid: os.Getpid(), HolderStart: startTime(os.Getpid()), Exit: &reaper.Exit{Pid: 42, Status: 3, Time: at}})
	if err := os.WriteFile(filepath.Join(bundle, RecordFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	exit, ok, err = Cleanup(context.Background(), bundle)
	if !ok || err != nil || exit.Status != 3 || !exit.Time.Equal(at) {
		t.Fatalf("recorded exit: %+v %v %v", exit, ok, err)
	}
}

// TestCleanupUnbindsThePodsNamespaces: after a lost shim of a pod without
// a holder, the delete action unbinds the pod's namespaces from its
// bundle: nothing of them stays mounted, and the bundle can go.
func TestCleanupUnbindsThePodsNamespaces(t *testing.T) {
	needRoot(t)
	bundle := t.TempDir()
	m := podns.For(bundle, true, true)
	if err := podns.Enter(podns.Setup{UTS: true, IPC: true}, m.Bind); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmount() })
	newRecorder(bundle, slog.New(slog.DiscardHandler)).update(func(*record) {})
	if _, ok, err := Cleanup(context.Background(), bundle); !ok || err != nil {
		t.Fatalf("cleanup: %v %v", ok, err)
	}
	if mounts := mountsMatching(bundle); len(mounts) > 0 {
		t.Fatalf("mounts left: %v", mounts)
	}
	if entries, _ := os.ReadDir(bundle); len(entries) != 0 {
		t.Fatalf("left in the bundle: %v", entries)
	}
}
