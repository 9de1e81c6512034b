package cgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	"github.com/containerd/errdefs"
)

// TestV1OnThisHost runs a child in a memory cgroup of its own on this cgroup
// v1 host: Join puts it there, Load finds it, Metrics and Procs read it, the
// OOM watcher reports its OOM kill (the kernel's eventfd), and ends by
// itself when the cgroup is removed, after which the cgroup is NotFound.
func TestV1OnThisHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a memory cgroup")
	}
	h := NewHost()
	if m := h.mode(); m != legacy && m != hybrid {
		t.Skipf("needs a cgroup v1 host; this one's mode is %d", m)
	}
	mounts, err := h.mounts()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := mounts["memory"]; !ok {
		t.Skip("needs a cgroup v1 memory hierarchy")
	}
	tail, err := exec.LookPath("tail")
	if err != nil {
		t.Skip("needs tail to fill the cgroup's memory")
	}

	group := fmt.Sprintf("/tether-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	var dirs []string
	for _, c := range []string{"memory", "pids", "devices"} {
		if m, ok := mounts[c]; ok {
			dir := m.dir(group)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			dirs = append(dirs, dir)
		}
	}
	removeDirs := func() error {
		var errs []error
		for _, dir := range dirs {
			if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	t.Cleanup(func() {
		if err := removeDirs(); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	memDir := mounts["memory"].dir(group)
	if err := os.WriteFile(filepath.Join(memDir, "memory.limit_in_bytes"), []byte("33554432"), 0); err != nil {
		t.Fatal(err)
	}

	// The child waits for a line before it fills its memory: it is in the
	// cgroup by then.
	child := exec.Command("/bin/sh", "-c", "read line; exec "+tail+" /dev/zero")
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	t.Cleanup(func() {
		if !waited {
			child.Process.Kill()
			child.Wait()
		}
	})
	pid := child.Process.Pid
	if err := Join(group, pid); err != nil {
		t.Fatal(err)
	}
	cg, err := h.Load(pid)
	if err != nil {
		t.Fatal(err)
	}
	if got := cg.Path().V1["memory"]; got != memDir {
		t.Fatalf("memory cgroup %q, want %q", got, memDir)
	}
	if procs, err := cg.Procs(); err != nil || !slices.Equal(procs, []int{pid}) {
		t.Fatalf("procs %v, %v; want [%d]", procs, err, pid)
	}
	a, err := cg.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	var m v1stats.Metrics
	if err := a.UnmarshalTo(&m); err != nil {
		t.Fatal(err)
	}
	if m.GetMemory().GetUsage().GetLimit() != 33554432 || m.GetPids().GetCurrent() != 1 {
		t.Fatalf("memory %v pids %v", m.GetMemory().GetUsage(), m.GetPids())
	}

	w := testWatcher(t)
	oom := make(chan struct{}, 8)
	watch, err := w.Watch(cg, pid, notice(oom))
	if err != nil {
		t.Fatal(err)
	}
	stdin.Write([]byte("go\n"))
	await(t, oom, "the kernel's OOM notice")
	err = child.Wait()
	waited = true
	if st, ok := child.ProcessState.Sys().(syscall.WaitStatus); !ok || st.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want killed by the OOM killer", err)
	}
	if a, err = cg.Metrics(); err != nil {
		t.Fatal(err)
	}
	if err := a.UnmarshalTo(&m); err != nil || m.GetMemoryOomControl().GetOomKill() == 0 {
		t.Errorf("oom control %v, %v; want an oom_kill counted", m.GetMemoryOomControl(), err)
	}

	if err := removeDirs(); err != nil {
		t.Fatal(err)
	}
	await(t, watch.ended, "the watch of the removed cgroup to end")
	if _, err := cg.Metrics(); !errdefs.IsNotFound(err) {
		t.Errorf("metrics of the removed cgroup: %v, want NotFound", err)
	}
	if _, err := cg.Procs(); !errdefs.IsNotFound(err) {
		t.Errorf("procs of the removed cgroup: %v, want NotFound", err)
	}
}
