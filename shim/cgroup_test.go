package shim

import (
	"os"
	"path/filepath"
	"testing"

	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
)

// TestCgroupV2MetricsFromRecordedTree: the metrics of a cgroup v2 group (a
// recorded cgroupfs tree; this host runs cgroup v1) reach containerd in its
// io.containerd.cgroups.v2.Metrics message with the numbers of the files.
func TestCgroupV2MetricsFromRecordedTree(t *testing.T) {
	mount, _ := filepath.Abs("testdata/cgroupv2")
	cg, err := loadCgroupV2(mount, "/tether/c1")
	if err != nil {
		t.Fatal(err)
	}
	a, err := cg.metrics()
	if err != nil {
		t.Fatal(err)
	}
	if a.GetTypeUrl() != "io.containerd.cgroups.v2.Metrics" {
		t.Fatalf("type url %q", a.GetTypeUrl())
	}
	var m v2stats.Metrics
	if err := a.UnmarshalTo(&m); err != nil {
		t.Fatal(err)
	}
	if m.GetPids().GetCurrent() != 7 || m.GetPids().GetLimit() != 100 {
		t.Errorf("pids %v", m.GetPids())
	}
	if m.GetCPU().GetUsageUsec() != 1234567 || m.GetCPU().GetNrThrottled() != 2 {
		t.Errorf("cpu %v", m.GetCPU())
	}
	if m.GetMemory().GetUsage() != 52428800 || m.GetMemory().GetUsageLimit() != 104857600 || m.GetMemory().GetAnon() != 41943040 {
		t.Errorf("memory %v", m.GetMemory())
	}
	if m.GetMemoryEvents().GetOomKill() != 1 {
		t.Errorf("memory events %v", m.GetMemoryEvents())
	}
	if len(m.GetIo().GetUsage()) != 1 || m.GetIo().GetUsage()[0].GetRbytes() != 4096000 {
		t.Errorf("io %v", m.GetIo())
	}
}

// TestCgroupV2OOMNoticeFromMemoryEvents: an oom_kill counter going up in
// memory.events is an OOM; the counter staying put is not.
func TestCgroupV2OOMNoticeFromMemoryEvents(t *testing.T) {
	dir := t.TempDir()
	group := filepath.Join(dir, "g")
	os.MkdirAll(group, 0o755)
	events := filepath.Join(group, "memory.events")
	os.WriteFile(events, []byte("oom 0\noom_kill 0\n"), 0o644)
	os.WriteFile(filepath.Join(group, "cgroup.events"), []byte("populated 1\n"), 0o644)
	cg, err := loadCgroupV2(dir, "/g")
	if err != nil {
		t.Fatal(err)
	}
	fd, check, err := cg.oomNotifier()
	if err != nil {
		t.Fatal(err)
	}
	defer closeFD(fd)
	if oom, gone := check(); oom || gone {
		t.Fatalf("no change: oom=%v gone=%v", oom, gone)
	}
	os.WriteFile(events, []byte("oom 1\noom_kill 1\n"), 0o644)
	if oom, gone := check(); !oom || gone {
		t.Fatalf("oom_kill 0->1: oom=%v gone=%v", oom, gone)
	}
	os.RemoveAll(group)
	if _, gone := check(); !gone {
		t.Fatal("removed cgroup not reported gone")
	}
}
