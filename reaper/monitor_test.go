package reaper

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMonitorKeepsRuntimeCallStatus runs CLI-style commands through the
// ProcessMonitor side by side with a storm of unrelated exits: each call must
// get its own status and its full output.
func TestMonitorKeepsRuntimeCallStatus(t *testing.T) {
	r := startReaper(t)
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			w := r.Watch() // an unrelated watcher holding unowned exits
			defer w.Close()
			forkSh(t, "exit 0")
		}()
		go func(i int) {
			defer wg.Done()
			var out bytes.Buffer
			c := exec.Command("/bin/sh", "-c", fmt.Sprintf("echo out-%d; exit %d", i, i%7))
			c.Stdout = &out
			ec, err := r.Start(c)
			if err != nil {
				t.Errorf("start: %v", err)
				return
			}
			status, err := r.Wait(c, ec)
			if err != nil {
				t.Errorf("wait: %v", err)
				return
			}
			if status != i%7 {
				t.Errorf("call %d: status %d, want %d", i, status, i%7)
			}
			if got := strings.TrimSpace(out.String()); got != fmt.Sprintf("out-%d", i) {
				t.Errorf("call %d: output %q", i, got)
			}
		}(i)
	}
	wg.Wait()
}

func TestStartLocked(t *testing.T) {
	r := startReaper(t)
	c := exec.Command("/bin/sh", "-c", "exit 9")
	ec, err := r.StartLocked(c)
	if err != nil {
		t.Fatal(err)
	}
	if status, _ := r.Wait(c, ec); status != 9 {
		t.Fatalf("status %d, want 9", status)
	}
	if _, err := r.StartLocked(exec.Command("/nonexistent/binary")); err == nil {
		t.Fatal("starting a missing binary succeeded")
	}
}

// TestStartFuncOwnsTheExit: a child started with StartFunc gets its exit
// through its function, once, even one that exits at once; a start that
// fails registers nobody.
func TestStartFuncOwnsTheExit(t *testing.T) {
	r := startReaper(t)
	got := make(chan Exit, 2)
	c := exec.Command("/bin/sh", "-c", "exit 7")
	if err := r.StartFunc(c, func(e Exit) { got <- e }); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-got:
		if e.Status != 7 || e.Pid != c.Process.Pid {
			t.Fatalf("exit %+v, want status 7 of pid %d", e, c.Process.Pid)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit")
	}
	c.Process.Release()
	if err := r.StartFunc(exec.Command("/nonexistent/binary"), func(Exit) { t.Error("exit of a child never started") }); err == nil {
		t.Fatal("starting a missing binary succeeded")
	}
	r.mu.Lock()
	owners := len(r.owners)
	r.mu.Unlock()
	if owners != 0 || len(got) != 0 {
		t.Fatalf("owners left %d, extra exits %d", owners, len(got))
	}
}
