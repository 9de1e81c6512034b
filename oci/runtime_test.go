package oci

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLastLoggedError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.json")
	os.WriteFile(path, []byte(`{"level":"warning","msg":"a warning","time":"x"}
not json at all
{"level":"error","msg":"first error","time":"x"}
{"level":"error","msg":"unable to start container process: exec: \"nope\": executable file not found in $PATH","time":"x"}
{"level":"info","msg":"later info","time":"x"}
`), 0o600)
	if got := lastLoggedError(path); got != `unable to start container process: exec: "nope": executable file not found in $PATH` {
		t.Fatalf("got %q", got)
	}
	os.WriteFile(path, []byte(`{"level":"info","msg":"only info"}`+"\n"), 0o600)
	if got := lastLoggedError(path); got != "only info" {
		t.Fatalf("got %q", got)
	}
	if got := lastLoggedError(filepath.Join(t.TempDir(), "missing")); got != "" {
		t.Fatalf("missing log: %q", got)
	}
}

func TestWithCriuLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dump.log")
	os.WriteFile(path, []byte("(00.01) ok\n(00.02) Error (criu/cr-dump.c:1): dump failed\n(00.03) done\n"), 0o600)
	err := withCriuLog(errors.New("runc checkpoint: exit 1"), path)
	if err == nil || !strings.Contains(err.Error(), "dump failed") || !strings.Contains(err.Error(), "runc checkpoint: exit 1") {
		t.Fatalf("got %v", err)
	}
	if withCriuLog(nil, path) != nil {
		t.Fatal("a successful call got an error")
	}
}

// TestCallDeadlineKillsTheRuntime: a runtime that hangs is killed at its
// deadline; the error names the runtime and says so.
func TestCallDeadlineKillsTheRuntime(t *testing.T) {
	dir := t.TempDir()
	hang := filepath.Join(dir, "hang-runtime")
	// exec, so the killed process is the one that hangs.
	os.WriteFile(hang, []byte("#!/bin/sh\nexec sleep 1000\n"), 0o755)
	rt, err := New(dir, "test", Config{Binary: hang, CallTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	err = rt.Kill(context.Background(), "c", 9, false)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), hang+" kill") {
		t.Fatalf("hung kill: %v", err)
	}
}
