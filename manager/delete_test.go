package manager

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/bundle"
	"github.com/tether-shim/tether/oci"
	"github.com/tether-shim/tether/sandbox"
)

// lostShimBundle makes a bundle as a lost shim leaves it, with a runtime
// that records its calls.
func lostShimBundle(t *testing.T) (dir, calls string) {
	t.Helper()
	dir = t.TempDir()
	calls = filepath.Join(dir, "calls")
	rt := filepath.Join(t.TempDir(), "runtime")
	os.WriteFile(rt, []byte("#!/bin/sh\necho \"$@\" >> "+calls+"\n"), 0o755)
	if err := (oci.Config{Binary: rt, Root: t.TempDir()}).Save(dir); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, bundle.InitPidFile), []byte("4242"), 0o600)
	os.WriteFile(bundle.ExecPidFile(dir, "e1"), []byte("4243"), 0o600)
	return dir, calls
}

// TestDeleteActionReportsTheRecordedExit: the init's recorded exit is
// reported, the runtime's container is force-deleted with the runtime the
// container used, and the shim's files go.
func TestDeleteActionReportsTheRecordedExit(t *testing.T) {
	dir, calls := lostShimBundle(t)
	at := time.Unix(1700000000, 0)
	bundle.WriteExit(bundle.ExitFile(dir, ""), 5, at)
	resp, err := cleanupBundle(context.Background(), dir, "ns", "c1", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetPid() != 4242 || resp.GetExitStatus() != 5 || !resp.GetExitedAt().AsTime().Equal(at) {
		t.Fatalf("response %v", resp)
	}
	got, _ := os.ReadFile(calls)
	if !strings.Contains(string(got), "delete --force c1") {
		t.Fatalf("runtime calls %q", got)
	}
	for _, f := range []string{bundle.InitPidFile, "init.exit", bundle.RuntimeConfigFile, "exec-e1.pid"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
}

// TestDeleteActionWithoutARecordReportsKilled: no exit was recorded (the
// shim died with the init): 137.
func TestDeleteActionWithoutARecordReportsKilled(t *testing.T) {
	dir, _ := lostShimBundle(t)
	resp, err := cleanupBundle(context.Background(), dir, "ns", "c1", slog.New(slog.DiscardHandler))
	if err != nil || resp.GetExitStatus() != 137 {
		t.Fatalf("%v %v", resp, err)
	}
	if _, err := cleanupBundle(context.Background(), dir, "ns", "../c1", slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a bad id was accepted")
	}
}

// TestDeleteActionRemovesOnlyAStaleSocket: the lost shim's socket goes,
// unless a shim of the same group still answers on it.
func TestDeleteActionRemovesOnlyAStaleSocket(t *testing.T) {
	for _, live := range []bool{false, true} {
		dir, _ := lostShimBundle(t)
		path := filepath.Join(t.TempDir(), "s")
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		if !live {
			l.Close()
		} else {
			defer l.Close()
		}
		bundle.WriteAddress(dir, "unix://"+path)
		if _, err := cleanupBundle(context.Background(), dir, "ns", "c1", slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path); (err == nil) != live {
			t.Errorf("live=%v: socket present=%v", live, err == nil)
		}
	}
}

// TestDeleteActionCleansUpASandbox: a pod sandbox's bundle (its record,
// no spec) is cleaned up as a pod: the recorded holder (a stand-in child
// here) is killed, and the response carries the exit the shim recorded,
// or 137 when it died with the holder running.
func TestDeleteActionCleansUpASandbox(t *testing.T) {
	dir := t.TempDir()
	holder := exec.Command("sleep", "1000")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill() })
	waited := make(chan error, 1)
	go func() { waited <- holder.Wait() }()
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", holder.Process.Pid))
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	record := fmt.Sprintf(`{"holder_pid":%d,"holder_start":%s}`, holder.Process.Pid, fields[19])
	if err := os.WriteFile(filepath.Join(dir, sandbox.RecordFile), []byte(record), 0o600); err != nil {
		t.Fatal(err)
	}
	resp, err := cleanupBundle(context.Background(), dir, "k8s.io", "pod1", slog.New(slog.DiscardHandler))
	if err != nil || resp.GetExitStatus() != 137 {
		t.Fatalf("%v %v", resp, err)
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("the holder was not killed")
	}
	at := time.Unix(1700000000, 0).UTC()
	record = fmt.Sprintf(`{"holder_pid":42,"exit":{"Pid":42,"Status":0,"Time":%q}}`, at.Format(time.RFC3339))
	os.WriteFile(filepath.Join(dir, sandbox.RecordFile), []byte(record), 0o600)
	resp, err = cleanupBundle(context.Background(), dir, "k8s.io", "pod1", slog.New(slog.DiscardHandler))
	if err != nil || resp.GetExitStatus() != 0 || resp.GetPid() != 42 || !resp.GetExitedAt().AsTime().Equal(at) {
		t.Fatalf("%v %v", resp, err)
	}
	if _, err := os.Stat(filepath.Join(dir, sandbox.RecordFile)); !os.IsNotExist(err) {
		t.Fatalf("record left: %v", err)
	}
}
