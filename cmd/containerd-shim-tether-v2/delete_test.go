package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/bundle"
	"github.com/tether-shim/tether/oci"
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
