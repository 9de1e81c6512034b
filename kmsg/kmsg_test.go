package kmsg

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Records as Linux writes them (6.1 in Debian 12's VM, 6.18 on the
// development host; the formats are the same).
const (
	killed618  = "Memory cgroup out of memory: Killed process 20300 (sh) total-vm:35364kB, anon-rss:19712kB, file-rss:1600kB, shmem-rss:0kB, UID:0 pgtables:92kB oom_score_adj:0"
	summary618 = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/oomprobe-2488,task_memcg=/oomprobe-2488,task=sh,pid=20300,uid=0"
)

func TestParseKill(t *testing.T) {
	for _, c := range []struct {
		text string
		want Kill
		ok   bool
	}{
		{killed618, Kill{Pid: 20300}, true},
		{summary618, Kill{Pid: 20300, Cgroup: "/oomprobe-2488"}, true},
		{"Out of memory: Killed process 42 (java) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:4kB oom_score_adj:0", Kill{Pid: 42}, true},
		{"Out of memory (oom_kill_allocating_task): Killed process 7 (x) total-vm:1kB", Kill{Pid: 7}, true},
		// A comm with commas and ",pid=" in it; a systemd scope's path.
		{"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/system.slice/tether-a.scope,task_memcg=/system.slice/tether-a.scope,task=a,pid=3,b,pid=77,uid=0",
			Kill{Pid: 77, Cgroup: "/system.slice/tether-a.scope"}, true},
		{"oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/k8s.io/abc,task=stress,pid=900,uid=0",
			Kill{Pid: 900, Cgroup: "/k8s.io/abc"}, true},
		{"Tasks in /kubepods.slice/x.scope are going to be killed due to memory.oom.group set",
			Kill{Cgroup: "/kubepods.slice/x.scope", Group: true}, true},
		// Not kills.
		{"Memory cgroup out of memory: OOM victim 5 (sh) is already exiting. Skip killing the task", Kill{}, false},
		{"oom_reaper: reaped process 20300 (sh), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB", Kill{}, false},
		{"sh invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0", Kill{}, false},
		{"Memory cgroup out of memory: Killed process x (sh) total-vm:1kB", Kill{}, false},
		{"oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/a,task=sh,pid=0,uid=0", Kill{}, false},
	} {
		got, ok := parseKill(c.text)
		if ok != c.ok || got != c.want {
			t.Errorf("parseKill(%q) = %+v, %v; want %+v, %v", c.text, got, ok, c.want, c.ok)
		}
	}
}

func TestParseRecord(t *testing.T) {
	r, ok := parseRecord([]byte("3,1849,1588517853,-,caller=T20300;" + `a\x5cb \x0a!` + "\n SUBSYSTEM=memory\n DEVICE=+x\n"))
	if !ok || r.facility != 0 || r.usec != 1588517853 || r.text != "a\\b \n!" {
		t.Fatalf("record %+v %v", r, ok)
	}
	r, ok = parseRecord([]byte("14,3,99,-;from userspace\n"))
	if !ok || r.facility != 1 || r.text != "from userspace" {
		t.Fatalf("user record %+v %v", r, ok)
	}
	for _, bad := range []string{"no header", "x,1,2,-;t\n", "6,1;t\n", "6,1,y,-;t\n"} {
		if _, ok := parseRecord([]byte(bad)); ok {
			t.Errorf("parsed %q", bad)
		}
	}
}

// fakeLog is a kernel log held in memory: records as /dev/kmsg gives them,
// some of them before the last clear.
type fakeLog struct {
	records []string // "PRI,SEQ,USEC,-;TEXT"
	cleared int      // records before the last clear
	// noTime drops the timestamps from the text the syslog call reads
	// (printk.time=0).
	noTime bool
	// tailCalls counts the syslog calls; tooSmall makes the first
	// answer nothing (its newest record did not fit).
	tailCalls int
	tooSmall  bool
}

func (f *fakeLog) add(usec uint64, facility int, text string) {
	f.records = append(f.records, fmt.Sprintf("%d,%d,%d,-;%s\n", facility<<3|6, len(f.records), usec, text))
}

func (f *fakeLog) log() *Log {
	return &Log{
		readAll: func(buf []byte) (int, error) {
			f.tailCalls++
			if f.tooSmall && f.tailCalls == 1 {
				return 0, nil
			}
			var text strings.Builder
			for _, rec := range f.records[f.cleared:] {
				r, _ := parseRecord([]byte(rec))
				stamp := fmt.Sprintf("[%5d.%06d] ", r.usec/1e6, r.usec%1e6)
				if f.noTime {
					stamp = ""
				}
				fmt.Fprintf(&text, "<%d>%s%s\n", r.facility<<3|6, stamp, r.text)
			}
			return copy(buf, text.String()), nil
		},
		records: func(sinceClear bool, each func([]byte)) error {
			from := 0
			if sinceClear {
				from = f.cleared
			}
			for _, r := range f.records[from:] {
				each([]byte(r))
			}
			return nil
		},
	}
}

// TestKillsAfterTheMarkOnly: a kill reported before the mark is not
// returned, even for the same pid (a pid used again), nor a line that
// userspace wrote into the log; a kill after it is.
func TestKillsAfterTheMarkOnly(t *testing.T) {
	f := &fakeLog{}
	f.add(1_000_000, 0, strings.Replace(killed618, "20300", "4242", 1))
	f.add(2_500_000, 0, "eth0: link up")
	l := f.log()
	m, err := l.Mark()
	if err != nil || m != (Mark{Usec: 2_500_000}) {
		t.Fatalf("mark %+v %v", m, err)
	}
	if kills, err := l.Kills(m); err != nil || len(kills) != 0 {
		t.Fatalf("kills before anything happened: %+v %v", kills, err)
	}
	f.add(3_000_000, 1, "Memory cgroup out of memory: Killed process 4242 (forged) total-vm:1kB")
	f.add(3_100_000, 0, strings.Replace(summary618, "20300", "4242", 1))
	f.add(3_100_001, 0, strings.Replace(killed618, "20300", "4242", 1))
	kills, err := l.Kills(m)
	want := []Kill{{Pid: 4242, Cgroup: "/oomprobe-2488"}, {Pid: 4242}}
	if err != nil || !slices.Equal(kills, want) {
		t.Fatalf("kills %+v %v, want %+v", kills, err, want)
	}
}

// TestMarkOfAClearedLog: nothing to read after dmesg -C is a mark before
// every record written since.
func TestMarkOfAClearedLog(t *testing.T) {
	f := &fakeLog{}
	f.add(1_000_000, 0, strings.Replace(killed618, "20300", "77", 1))
	f.cleared = 1
	l := f.log()
	m, err := l.Mark()
	if err != nil || !m.Empty {
		t.Fatalf("mark of a cleared log %+v %v", m, err)
	}
	if f.tailCalls != 2 {
		t.Fatalf("%d syslog calls, want a retry with a larger buffer", f.tailCalls)
	}
	f.add(500, 0, strings.Replace(killed618, "20300", "78", 1)) // any timestamp
	kills, err := l.Kills(m)
	if err != nil || !slices.Equal(kills, []Kill{{Pid: 78}}) {
		t.Fatalf("kills %+v %v", kills, err)
	}
}

// TestMarkWithoutTimestampsReadsTheLog: with printk.time=0 the syslog text
// has no timestamps; the mark is read from the records.
func TestMarkWithoutTimestampsReadsTheLog(t *testing.T) {
	f := &fakeLog{noTime: true}
	f.add(7_000_000, 0, "first")
	f.add(8_000_000, 0, "second")
	f.add(9_000_000, 1, "a user's line, newest")
	m, err := f.log().Mark()
	if err != nil || m != (Mark{Usec: 9_000_000}) {
		t.Fatalf("mark %+v %v", m, err)
	}
}

// TestMarkRetriesWhenTheNewestRecordDoesNotFit: an empty answer with the
// small buffer is asked again with a large one.
func TestMarkRetriesWhenTheNewestRecordDoesNotFit(t *testing.T) {
	f := &fakeLog{tooSmall: true}
	f.add(5_000_000, 0, strings.Repeat("x", 100))
	m, err := f.log().Mark()
	if err != nil || m != (Mark{Usec: 5_000_000}) || f.tailCalls != 2 {
		t.Fatalf("mark %+v %v after %d calls", m, err, f.tailCalls)
	}
}

func TestLastTimestamp(t *testing.T) {
	for text, want := range map[string]uint64{
		"<6>[    0.000000] Linux version\n<4>[ 1439.477894] cni0: port 1\n": 1439477894,
		"<6>[12.000001][ T123] a\n<6>[12.000001][ T123]  second line\n":     12000001,
	} {
		if got, ok := lastTimestamp([]byte(text)); !ok || got != want {
			t.Errorf("lastTimestamp(%q) = %d, %v; want %d", text, got, ok, want)
		}
	}
	for _, text := range []string{"<6>Linux version\n", "", "<6>[ 12.5] short\n"} {
		if _, ok := lastTimestamp([]byte(text)); ok {
			t.Errorf("lastTimestamp(%q) found one", text)
		}
	}
}

// TestTheRunningKernelsLog has the kernel OOM-kill a process in a memory
// cgroup of its own: its report is among the kills after a mark made
// before, with the cgroup if the summary was not rate-limited away, and
// not among those after a mark made after it.
func TestTheRunningKernelsLog(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the kernel's log and a memory cgroup")
	}
	l := New()
	if !l.pidsAsKernel && !l.pathsAsKernel {
		t.Skip("this process sees neither pids nor cgroup paths as the kernel's log names them (pid and cgroup namespaces of its own)")
	}
	before, err := l.Mark()
	if err != nil {
		t.Fatal(err)
	}
	pid, group := oomKill(t)
	// Counted as the shim counts: by pid where this process sees pids as
	// the log does, by cgroup where it sees paths so (in a pid namespace
	// of its own, as in a fresh machine's root, the log's pids are not
	// this process's).
	n, err := l.KillsOf(before, pid, group)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		kills, _ := l.Kills(before)
		t.Fatalf("%d kills of pid %d in %s, want 1, among %+v", n, pid, group, kills)
	}
	if l.pidsAsKernel {
		kills, _ := l.Kills(before)
		for _, k := range kills {
			if k.Pid == pid && k.Cgroup != "" && l.pathsAsKernel && k.Cgroup != group {
				t.Errorf("kill of %d in cgroup %q, want %q", pid, k.Cgroup, group)
			}
		}
	}
	after, err := l.Mark()
	if err != nil {
		t.Fatal(err)
	}
	if n, err := l.KillsOf(after, pid, group); err != nil || n != 0 {
		t.Fatalf("%d kills of %d after a mark made after it (%v): %+v", n, pid, err, after)
	}
}

func oomKill(t *testing.T) (pid int, group string) {
	t.Helper()
	tail, err := exec.LookPath("tail")
	if err != nil {
		t.Skip("needs tail to fill a memory cgroup")
	}
	root, limit := "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
	if controllers, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		if !strings.Contains(string(controllers), "memory") {
			t.Skip("cgroup v2 without the memory controller")
		}
		root, limit = "/sys/fs/cgroup", "memory.max"
	} else if _, err := os.Stat(filepath.Join(root, limit)); err != nil {
		t.Skip("no memory cgroup hierarchy")
	}
	group = fmt.Sprintf("/tether-kmsg-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	dir := filepath.Join(root, group)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	if err := os.WriteFile(filepath.Join(dir, limit), []byte("16777216"), 0); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "memory.swap.max"), []byte("0"), 0)
	os.WriteFile(filepath.Join(dir, "memory.memsw.limit_in_bytes"), []byte("16777216"), 0)
	// The shell joins the cgroup, then becomes tail, which keeps the one
	// endless line of /dev/zero in memory.
	cmd := exec.Command("sh", "-c", `echo $$ > "$1" && exec "$2" /dev/zero`, "sh", filepath.Join(dir, "cgroup.procs"), tail)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	status, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !status.Signaled() || status.Signal() != syscall.SIGKILL {
		t.Fatalf("the process in the cgroup ended with %v, not killed", err)
	}
	return cmd.Process.Pid, group
}

// BenchmarkMark is what a container's start pays: one syslog(2) call for
// the log's newest records.
func BenchmarkMark(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	l := New()
	for b.Loop() {
		if _, err := l.Mark(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkKillsOfTheWholeLog is what a Flush pays when it must read the
// log: every record since the oldest (a mark older than them all).
func BenchmarkKillsOfTheWholeLog(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	l := New()
	for b.Loop() {
		if _, err := l.Kills(Mark{}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestKillsOfAContainer: a container's kills are its init's, those whose
// record names its cgroup (a child's, a group's), each victim once; pids
// and paths are compared only by a process that sees them as the kernel
// does (a shim in a pid or cgroup namespace of its own does not).
func TestKillsOfAContainer(t *testing.T) {
	f := &fakeLog{}
	l := f.log()
	m, _ := l.Mark()
	kill := func(text string) { f.add(uint64(len(f.records)+1)*1000, 0, text) }
	kill(strings.Replace(summary618, "20300", "42", 1))                                // the init, in its cgroup
	kill(strings.Replace(killed618, "20300", "42", 1))                                 // the same kill
	kill(strings.Replace(strings.Replace(summary618, "20300", "43", 1), "sh", "x", 1)) // a child
	kill(strings.Replace(killed618, "20300", "7", 1))                                  // another container's
	kill("Tasks in /elsewhere are going to be killed due to memory.oom.group set")
	for _, c := range []struct {
		pids, paths bool
		pid         int
		cgroup      string
		want        uint64
	}{
		{true, true, 42, "/oomprobe-2488", 2},
		{true, false, 42, "/oomprobe-2488", 1},
		{false, true, 42, "/oomprobe-2488", 2},
		{false, false, 42, "/oomprobe-2488", 0},
		{true, true, 42, "/other", 1},
		{true, true, 99, "/elsewhere", 1},
	} {
		l.pidsAsKernel, l.pathsAsKernel = c.pids, c.paths
		if got, err := l.KillsOf(m, c.pid, c.cgroup); err != nil || got != c.want {
			t.Errorf("%+v: %d kills, %v", c, got, err)
		}
	}
}

func TestCountKills(t *testing.T) {
	group := []Kill{{Cgroup: "/g", Group: true}, {Pid: 5}, {Pid: 6}}
	if n := CountKills(group, 0, "/g"); n != 1 {
		t.Errorf("a group kill of the cgroup, members unnamed: %d", n)
	}
	if n := CountKills(append(group, Kill{Pid: 5, Cgroup: "/g"}, Kill{Pid: 6, Cgroup: "/g"}), 0, "/g"); n != 2 {
		t.Errorf("a group kill of two named members: %d", n)
	}
	if n := CountKills(group, 0, ""); n != 0 {
		t.Errorf("nothing to match: %d", n)
	}
}
