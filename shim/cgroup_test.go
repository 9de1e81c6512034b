package shim

import (
	"os"
	"path/filepath"
	"testing"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
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
	os.WriteFile(filepath.Join(group, "cgroup.controllers"), []byte("memory\n"), 0o644)
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

// TestCgroupV1MetricsFromRecordedTree: a v1 cgroup's files become
// containerd's io.containerd.cgroups.v1.Metrics with their numbers.
func TestCgroupV1MetricsFromRecordedTree(t *testing.T) {
	root, _ := filepath.Abs("testdata/cgroupv1")
	dirs := map[string]string{}
	for _, c := range []string{"memory", "cpuacct", "cpu", "pids", "blkio"} {
		dirs[c] = filepath.Join(root, c, "c1")
	}
	a, err := cgroupV1{dirs: dirs}.metrics()
	if err != nil {
		t.Fatal(err)
	}
	if a.GetTypeUrl() != "io.containerd.cgroups.v1.Metrics" {
		t.Fatalf("type url %q", a.GetTypeUrl())
	}
	var m v1stats.Metrics
	if err := a.UnmarshalTo(&m); err != nil {
		t.Fatal(err)
	}
	if m.GetPids().GetCurrent() != 7 || m.GetPids().GetLimit() != 0 {
		t.Errorf("pids %v", m.GetPids())
	}
	u := m.GetCPU().GetUsage()
	if u.GetTotal() != 987654321 || u.GetUser() != 500000000 || u.GetKernel() != 200000000 || len(u.GetPerCPU()) != 2 {
		t.Errorf("cpu usage %v", u)
	}
	if th := m.GetCPU().GetThrottling(); th.GetPeriods() != 10 || th.GetThrottledPeriods() != 4 || th.GetThrottledTime() != 7000 {
		t.Errorf("throttling %v", th)
	}
	mem := m.GetMemory()
	if mem.GetRSS() != 41943040 || mem.GetCache() != 8388608 || mem.GetPgFault() != 12345 || mem.GetPgPgIn() != 1234 ||
		mem.GetHierarchicalSwapLimit() != 9223372036854771712 || mem.GetTotalPgMajFault() != 6 {
		t.Errorf("memory stat %v", mem)
	}
	if e := mem.GetUsage(); e.GetUsage() != 52428800 || e.GetLimit() != 104857600 || e.GetMax() != 60000000 || e.GetFailcnt() != 3 {
		t.Errorf("memory usage %v", e)
	}
	if mem.GetSwap().GetUsage() != 52428800 || mem.GetKernel().GetUsage() != 1048576 {
		t.Errorf("swap %v kernel %v", mem.GetSwap(), mem.GetKernel())
	}
	if m.GetMemoryOomControl().GetOomKill() != 2 {
		t.Errorf("oom control %v", m.GetMemoryOomControl())
	}
	b := m.GetBlkio()
	if len(b.GetIoServiceBytesRecursive()) != 5 || b.GetIoServiceBytesRecursive()[0].GetValue() != 4096000 ||
		b.GetIoServiceBytesRecursive()[0].GetOp() != "Read" || b.GetIoServiceBytesRecursive()[0].GetMajor() != 8 || len(b.GetIoServicedRecursive()) != 2 {
		t.Errorf("blkio %v", b)
	}
}

func TestProcCgroupsAndMounts(t *testing.T) {
	dir := t.TempDir()
	proc := filepath.Join(dir, "cgroup")
	os.WriteFile(proc, []byte("12:pids:/tether/c1\n4:memory:/tether/c1\n2:cpu,cpuacct:/tether/c1\n1:name=systemd:/x\n0::/unified/c1\n"), 0o644)
	paths, err := procCgroups(proc)
	if err != nil {
		t.Fatal(err)
	}
	if paths["memory"] != "/tether/c1" || paths["cpuacct"] != "/tether/c1" || paths["systemd"] != "/x" || paths[""] != "/unified/c1" {
		t.Fatalf("paths %v", paths)
	}
	mountinfo := filepath.Join(dir, "mountinfo")
	os.WriteFile(mountinfo, []byte(`25 24 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw shared:11 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw shared:12 - cgroup cgroup rw,memory
`), 0o644)
	mounts, err := v1Mounts(mountinfo)
	if err != nil {
		t.Fatal(err)
	}
	if mounts["cpu"] != "/sys/fs/cgroup/cpu,cpuacct" || mounts["cpuacct"] != "/sys/fs/cgroup/cpu,cpuacct" || mounts["memory"] != "/sys/fs/cgroup/memory" {
		t.Fatalf("mounts %v", mounts)
	}
}
