package cgroup

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
)

// copyTree copies the recorded tree src into a temporary directory, for a
// test that removes part of it.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "tree")
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return dst
}

// fakeHost is a host whose /proc and cgroup mounts are files of the test.
func fakeHost(t *testing.T, m mode, pidCgroup, mountinfo string) *Host {
	t.Helper()
	proc := t.TempDir()
	for name, data := range map[string]string{"42/cgroup": pidCgroup, "self/mountinfo": mountinfo} {
		os.MkdirAll(filepath.Join(proc, filepath.Dir(name)), 0o755)
		if err := os.WriteFile(filepath.Join(proc, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := newHost("/nonexistent", proc)
	h.mode = func() mode { return m }
	return h
}

// v1Mountinfo mounts each controller's recorded hierarchy of root, and
// blkio's c1 group alone (as a bind mount of part of a hierarchy shows).
func v1Mountinfo(root string) string {
	var b strings.Builder
	for i, c := range []string{"memory", "cpu", "cpuacct", "pids", "devices"} {
		fmt.Fprintf(&b, "%d 25 0:%d / %s rw shared:%d - cgroup cgroup rw,%s\n", 30+i, 30+i, filepath.Join(root, c), i, c)
	}
	b.WriteString("40 25 0:40 /c1 " + filepath.Join(root, "blkio", "c1") + " rw - cgroup cgroup rw,blkio\n")
	b.WriteString("41 25 0:41 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
	return b.String()
}

// TestV2MetricsFromRecordedTree: a cgroup v2 group's files (a recorded
// cgroupfs tree) reach containerd as io.containerd.cgroups.v2.Metrics with
// their numbers.
func TestV2MetricsFromRecordedTree(t *testing.T) {
	root, _ := filepath.Abs("testdata/cgroupv2")
	h := fakeHost(t, unified, "0::/tether/c1\n", "")
	h.root = root
	cg, err := h.Load(42)
	if err != nil {
		t.Fatal(err)
	}
	if got := cg.Path(); got.V2 != filepath.Join(root, "tether/c1") || got.V1 != nil {
		t.Fatalf("path %+v", got)
	}
	a, err := cg.Metrics()
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
	if m.GetMemory().GetUsage() != 52428800 || m.GetMemory().GetUsageLimit() != 104857600 || m.GetMemory().GetAnon() != 41943040 ||
		m.GetMemory().GetSwapLimit() != ^uint64(0) || m.GetMemory().GetMaxUsage() != 60000000 {
		t.Errorf("memory %v", m.GetMemory())
	}
	if m.GetMemoryEvents().GetOomKill() != 1 || m.GetMemoryEvents().GetMax() != 3 {
		t.Errorf("memory events %v", m.GetMemoryEvents())
	}
	if len(m.GetIo().GetUsage()) != 1 || m.GetIo().GetUsage()[0].GetRbytes() != 4096000 || m.GetIo().GetUsage()[0].GetMajor() != 8 {
		t.Errorf("io %v", m.GetIo())
	}
	procs, err := cg.Procs()
	if err != nil || !slices.Equal(procs, []int{101, 102, 103}) {
		t.Errorf("procs %v, %v; want [101 102 103] (the group's and its sub-group's)", procs, err)
	}
}

// TestV1MetricsFromRecordedTree: a v1 cgroup found through /proc/PID/cgroup
// and mountinfo (one hierarchy bind-mounted from its c1 group) has
// containerd's io.containerd.cgroups.v1.Metrics with the files' numbers,
// and the processes of its devices hierarchy, as runc ps reads them.
func TestV1MetricsFromRecordedTree(t *testing.T) {
	root, _ := filepath.Abs("testdata/cgroupv1")
	h := fakeHost(t, hybrid, "6:blkio:/c1\n5:devices:/c1\n4:memory:/c1\n3:pids:/c1\n2:cpu,cpuacct:/c1\n1:name=systemd:/x\n0::/c1\n", v1Mountinfo(root))
	cg, err := h.Load(42)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, c := range []string{"memory", "cpu", "cpuacct", "pids", "devices", "blkio"} {
		want[c] = filepath.Join(root, c, "c1")
	}
	if got := cg.Path(); got.V2 != "" || !mapsEqual(got.V1, want) {
		t.Fatalf("path %+v, want v1 %v", got, want)
	}
	a, err := cg.Metrics()
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
	procs, err := cg.Procs()
	if err != nil || !slices.Equal(procs, []int{201, 202, 203, 204}) {
		t.Errorf("procs %v, %v; want the devices hierarchy's [201 202 203 204]", procs, err)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestGoneCgroupIsNotFound: once the cgroup's directory is gone, Metrics,
// Procs and LoadPath say errdefs.ErrNotFound (which containerd maps to
// NotFound), with the directory in the message.
func TestGoneCgroupIsNotFound(t *testing.T) {
	h := NewHost()
	v2root := copyTree(t, "testdata/cgroupv2")
	v1root := copyTree(t, "testdata/cgroupv1")
	paths := map[string]Path{
		"v2": {V2: filepath.Join(v2root, "tether/c1")},
		"v1": {V1: map[string]string{"memory": filepath.Join(v1root, "memory/c1"), "pids": filepath.Join(v1root, "pids/c1")}},
	}
	for name, p := range paths {
		t.Run(name, func(t *testing.T) {
			cg, err := h.LoadPath(p)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cg.Metrics(); err != nil {
				t.Fatalf("metrics before removal: %v", err)
			}
			for _, dir := range []string{p.V2, p.V1["memory"], p.V1["pids"]} {
				if dir != "" {
					os.RemoveAll(dir)
				}
			}
			_, merr := cg.Metrics()
			_, perr := cg.Procs()
			_, lerr := h.LoadPath(p)
			for what, err := range map[string]error{"metrics": merr, "procs": perr, "load": lerr} {
				if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "c1") {
					t.Errorf("%s of a removed cgroup: %v, want errdefs.ErrNotFound naming the cgroup", what, err)
				}
			}
		})
	}
}

func TestLoadOfExitedPidIsNotFound(t *testing.T) {
	h := fakeHost(t, unified, "", "")
	if _, err := h.Load(43); !errdefs.IsNotFound(err) {
		t.Fatalf("load of a pid without /proc entry: %v, want errdefs.ErrNotFound", err)
	}
}

// TestJoinV1: the shim joins the path in every v1 hierarchy that has it.
func TestJoinV1(t *testing.T) {
	root := t.TempDir()
	for _, c := range []string{"memory", "cpu", "cpuacct", "pids", "devices"} {
		os.MkdirAll(filepath.Join(root, c), 0o755)
	}
	os.MkdirAll(filepath.Join(root, "memory/shim"), 0o755)
	os.MkdirAll(filepath.Join(root, "pids/shim"), 0o755)
	h := fakeHost(t, legacy, "", v1Mountinfo(root))
	if err := h.join("/shim", 42); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"memory", "pids"} {
		if data, err := os.ReadFile(filepath.Join(root, c, "shim/cgroup.procs")); err != nil || string(data) != "42" {
			t.Errorf("%s: cgroup.procs %q, %v", c, data, err)
		}
	}
	if err := h.join("/elsewhere", 42); err == nil {
		t.Error("joined a cgroup no hierarchy has")
	}
}

func TestProcCgroupsAndMounts(t *testing.T) {
	dir := t.TempDir()
	proc := filepath.Join(dir, "cgroup")
	os.WriteFile(proc, []byte("12:pids:/tether/c1\n4:memory:/tether/c1\n2:cpu,cpuacct:/tether/c1\n1:name=systemd:/x\n0::/unified/c1\n"), 0o644)
	v1paths, v2path, err := procCgroups(proc)
	if err != nil {
		t.Fatal(err)
	}
	if v1paths["memory"] != "/tether/c1" || v1paths["cpuacct"] != "/tether/c1" || v1paths["name=systemd"] != "/x" || v2path != "/unified/c1" {
		t.Fatalf("paths %v %q", v1paths, v2path)
	}
	mountinfo := filepath.Join(dir, "mountinfo")
	os.WriteFile(mountinfo, []byte(`25 24 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw shared:11 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw shared:12 - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/systemd rw shared:13 - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
30 25 0:25 /kubepods /var/lib/x/memory rw shared:14 - cgroup cgroup rw,memory
`), 0o644)
	mounts, err := v1Mounts(mountinfo)
	if err != nil {
		t.Fatal(err)
	}
	if mounts["cpu"].point != "/sys/fs/cgroup/cpu,cpuacct" || mounts["cpuacct"].point != "/sys/fs/cgroup/cpu,cpuacct" ||
		mounts["memory"] != (mount{"/sys/fs/cgroup/memory", "/"}) || mounts["name=systemd"].point != "/sys/fs/cgroup/systemd" {
		t.Fatalf("mounts %v", mounts)
	}
	if _, ok := mounts["release_agent=/x"]; ok {
		t.Errorf("an option taken for a controller: %v", mounts)
	}
	bind := mount{point: "/m", root: "/kubepods"}
	for path, want := range map[string]string{"/kubepods/c1": "/m/c1", "/kubepods": "/m", "/kubepodsx/c1": "", "/other": ""} {
		if got := bind.dir(path); got != want {
			t.Errorf("bind mount of /kubepods at /m: dir(%q) = %q, want %q", path, got, want)
		}
	}
}
