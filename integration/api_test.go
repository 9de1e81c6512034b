package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/proto/task"
)

// initPid is the pid `ctr task ls` shows for id.
func (e *env) initPid(id string) int {
	e.t.Helper()
	for _, line := range strings.Split(e.ctr("task", "ls").Stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			pid, _ := strconv.Atoi(f[1])
			return pid
		}
	}
	e.t.Fatalf("%s not in task ls", id)
	return 0
}

// touchStop makes /stop in the root of the container id, whose init pid the
// `ctr task ls` output taskList shows: a counting container ends on it.
// Not with an exec: its `touch` is killed (status 137) when the counter
// sees the file and the container's init ends before the exec has exited.
func touchStop(t *testing.T, taskList, id string) {
	t.Helper()
	for _, line := range strings.Split(taskList, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			if err := os.WriteFile(filepath.Join("/proc", f[1], "root", "stop"), nil, 0o644); err != nil {
				t.Fatalf("tell %s to stop: %v", id, err)
			}
			return
		}
	}
	t.Fatalf("%s not in task ls:\n%s", id, taskList)
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestPauseResume(t *testing.T) {
	e := setup(t)
	id := e.id("pause")
	events, err := e.ctd.SubscribeEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	e.runDetached(id, "sleep", "1000")
	e.ctr("task", "pause", id)
	if st := e.taskStatus(id); st != "PAUSED" {
		t.Fatalf("status after pause %q", st)
	}
	e.checkPlacement(id, e.initPid(id))
	// cgroup v2 freezes through cgroup.freeze (cgroup.events says when
	// every process is frozen), v1 through the freezer controller.
	if unifiedCgroups() {
		dir := cgroupDir(t, e.initPid(id), "")
		if got := readTrim(t, filepath.Join(dir, "cgroup.freeze")); got != "1" {
			t.Fatalf("cgroup.freeze %q", got)
		}
		if events := readTrim(t, filepath.Join(dir, "cgroup.events")); !strings.Contains(events, "frozen 1") {
			t.Fatalf("cgroup.events %q, want frozen 1", events)
		}
	} else if got := readTrim(t, filepath.Join(cgroupDir(t, e.initPid(id), "freezer"), "freezer.state")); got != "FROZEN" {
		t.Fatalf("freezer state %q", got)
	}
	res, err := e.ctrErr(nil, "task", "exec", "--exec-id", "p1", id, "true")
	if err == nil || !strings.Contains(res.Stderr, "paused") {
		t.Fatalf("exec into a paused container: %v, stderr %q; want a clear error", err, res.Stderr)
	}
	e.ctr("task", "resume", id)
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Fatalf("status after resume %q", st)
	}
	if unifiedCgroups() {
		if got := readTrim(t, filepath.Join(cgroupDir(t, e.initPid(id), ""), "cgroup.freeze")); got != "0" {
			t.Fatalf("cgroup.freeze after resume %q", got)
		}
	}
	for _, topic := range []string{"/tasks/paused", "/tasks/resumed"} {
		if err := events.WaitFor(topic, 10*time.Second, id); err != nil {
			t.Fatal(err)
		}
	}
	e.ctr("task", "exec", "--exec-id", "p2", id, "true")
}

// TestUpdateResources: memory, cpu and pids limits reach the cgroup through
// the runtime (ctr 1.6 has no update command: the ttrpc client sends it).
func TestUpdateResources(t *testing.T) {
	e := setup(t)
	id := e.id("update")
	e.runDetached(id, "sleep", "1000")
	memLimit, shares, quota, period, pids := int64(96<<20), uint64(512), int64(50000), uint64(100000), int64(42)
	res, _ := json.Marshal(specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &memLimit},
		CPU:    &specs.LinuxCPU{Shares: &shares, Quota: &quota, Period: &period},
		Pids:   &specs.LinuxPids{Limit: &pids},
	})
	client, err := e.ctd.DialShim(id)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	_, err = client.Update(context.Background(), &task.UpdateTaskRequest{Id: id, Resources: &anypb.Any{
		TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: res}})
	if err != nil {
		t.Fatal(err)
	}
	pid := e.initPid(id)
	e.checkPlacement(id, pid)
	checks := map[string]string{
		filepath.Join(cgroupDir(t, pid, "memory"), "memory.limit_in_bytes"): strconv.FormatInt(memLimit, 10),
		filepath.Join(cgroupDir(t, pid, "cpu"), "cpu.shares"):               "512",
		filepath.Join(cgroupDir(t, pid, "cpu"), "cpu.cfs_quota_us"):         "50000",
		filepath.Join(cgroupDir(t, pid, "pids"), "pids.max"):                "42",
	}
	if unifiedCgroups() {
		// cgroup v2's files; runc turns 512 shares into weight
		// 1 + (512-2)*9999/262142 = 20.
		dir := cgroupDir(t, pid, "")
		checks = map[string]string{
			filepath.Join(dir, "memory.max"): strconv.FormatInt(memLimit, 10),
			filepath.Join(dir, "cpu.weight"): "20",
			filepath.Join(dir, "cpu.max"):    "50000 100000",
			filepath.Join(dir, "pids.max"):   "42",
		}
	}
	for path, want := range checks {
		if got := readTrim(t, path); got != want {
			t.Errorf("%s = %s, want %s", path, got, want)
		}
	}
}

func TestMetrics(t *testing.T) {
	e := setup(t)
	id := e.id("metrics")
	// Memory, CPU, and disk writes that reach the device (fsync).
	e.runDetached(id, "sh", "-c", "x=$(head -c 5000000 /dev/zero | tr '\\0' a); dd if=/dev/zero of=/written bs=64k count=64 conv=fsync 2>/dev/null; sleep 1000")
	if unifiedCgroups() {
		e.checkV2Metrics(id)
		return
	}
	var m struct {
		Memory struct {
			Usage struct{ Usage uint64 } `json:"usage"`
		} `json:"memory"`
		Pids struct{ Current uint64 } `json:"pids"`
		CPU  struct {
			Usage struct{ Total uint64 } `json:"usage"`
		} `json:"cpu"`
	}
	var out string
	// Until the container has run (it has been started, not yet scheduled).
	e.waitFor("real numbers in the container's metrics", 30*time.Second, func() bool {
		out = e.ctr("task", "metrics", "--format", "json", id).Stdout
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("metrics %q: %v", out, err)
		}
		return m.Memory.Usage.Usage > 0 && m.Pids.Current > 0 && m.CPU.Usage.Total > 0
	})
	table := e.ctr("task", "metrics", id).Stdout
	if !strings.Contains(table, "memory.usage_in_bytes") {
		t.Fatalf("metrics table:\n%s", table)
	}
}

// checkV2Metrics checks a cgroup v2 container's metrics as containerd
// decodes them (io.containerd.cgroups.v2.Metrics): memory, pids, CPU, and
// the disk writes where the io controller is on for the container's cgroup
// (cgroupfs turns every controller on; systemd turns io on for a unit only
// with IO accounting).
func (e *env) checkV2Metrics(id string) {
	t := e.t
	var m struct {
		Memory struct {
			Usage uint64 `json:"usage"`
		} `json:"memory"`
		Pids struct {
			Current, Limit uint64
		} `json:"pids"`
		CPU struct {
			UsageUsec uint64 `json:"usage_usec"`
		} `json:"cpu"`
		IO struct {
			Usage []struct{ Wbytes uint64 } `json:"usage"`
		} `json:"io"`
	}
	dir := cgroupDir(t, e.initPid(id), "")
	_, err := os.Stat(filepath.Join(dir, "io.stat"))
	withIO := err == nil
	written := func() (n uint64) {
		for _, u := range m.IO.Usage {
			n += u.Wbytes
		}
		return n
	}
	var out string
	e.waitFor("real numbers in the container's metrics", 60*time.Second, func() bool {
		out = e.ctr("task", "metrics", "--format", "json", id).Stdout
		m.IO.Usage = nil
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("metrics %q: %v", out, err)
		}
		return m.Memory.Usage > 0 && m.Pids.Current > 0 && m.CPU.UsageUsec > 0 && (!withIO || written() >= 4<<20)
	})
	if current, _ := strconv.ParseUint(readTrim(t, filepath.Join(dir, "memory.current")), 10, 64); current == 0 || m.Memory.Usage > 4*current {
		t.Fatalf("memory usage %d, memory.current %d", m.Memory.Usage, current)
	}
	t.Logf("v2 metrics: memory %d, pids %d, cpu %d µs, io controller %v, written %d: %s", m.Memory.Usage, m.Pids.Current, m.CPU.UsageUsec, withIO, written(), out)
	table := e.ctr("task", "metrics", id).Stdout
	if !strings.Contains(table, "memory.usage") || !strings.Contains(table, "pids.current") {
		t.Fatalf("metrics table:\n%s", table)
	}
}

// TestOOMKill: a container over its memory limit is OOM-killed: TaskOOM and
// exit status 137.
func TestOOMKill(t *testing.T) {
	e := setup(t)
	id := e.id("oom")
	events, err := e.ctd.SubscribeEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	// dd, not a shell filling a variable: that takes over ctr's minute in
	// a VM without KVM.
	res, _ := e.ctrErr(nil, append([]string{"run", "--rm", "--memory-limit", strconv.Itoa(oomLimit), "--runtime", harness.Runtime,
		harness.BusyboxImageName, id}, oomCommand...)...)
	if res.ExitCode != 137 {
		t.Fatalf("exit code %d, want 137 (stdout %q stderr %q)", res.ExitCode, res.Stdout, res.Stderr)
	}
	if err := events.WaitFor("/tasks/oom", 10*time.Second, id); err != nil {
		t.Fatal(err)
	}
}
