// Command bench measures tether (io.containerd.tether.v2) side by side with
// containerd's runc shim (io.containerd.runc.v2) on one private containerd,
// interleaving the two so machine noise hits both, beside the floor (what
// an idle Go ttrpc server costs), and reports each figure absolute, against
// runc-v2 and against the floor, with the targets met or not: a Markdown
// table, the raw samples as JSON and density charts (SVG).
//
// It runs as a child subreaper: the shims re-parent to it, so it can read
// each shim's CPU time from /proc after it exited and before reaping it.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/integration/bench/procmem"
	"github.com/tether-shim/tether/integration/bench/results"
	"github.com/tether-shim/tether/integration/harness"
)

// runtimes are compared in this order; tether is always first.
var runtimes = []runtimeUnderTest{
	{Name: results.Tether, Runtime: harness.Runtime, Binary: "containerd-shim-tether-v2"},
	{Name: results.Runc, Runtime: "io.containerd.runc.v2", Binary: "containerd-shim-runc-v2"},
}

type runtimeUnderTest struct {
	Name    string // short name in the report
	Runtime string // containerd runtime name
	Binary  string // shim binary name
}

type config struct {
	out      string
	shimDir  string
	runcShim string // containerd 1.x's containerd-shim-runc-v2; found on PATH if empty
	scale    []int  // memory sample points (containers per runtime)
	idle     int    // containers whose shims give the idle per-shim figure
	settle   time.Duration
	steady   time.Duration // age of the idle shims at their second sample
	busybox  string
	only     string // steps to run; all when empty
	tmp      string // the run's own scratch directory
	speed    speedConfig
	growth   growthConfig
	pod      podConfig
	upgrades int // live upgrades of one tether shim, timed
	// stormUpgrades are timed upgrades during an exec storm of stormExecs
	// clients at a time.
	stormUpgrades, stormExecs int
	logs                      string // directory to keep containerd's logs (with the shims') in
}

func main() {
	var c config
	var scale, podScale string
	flag.StringVar(&c.out, "out", "bench", "directory for results.md, samples.json and the charts")
	flag.StringVar(&c.shimDir, "shim-dir", "bin", "directory holding the containerd-shim-tether-v2 to measure")
	flag.StringVar(&c.runcShim, "runc-shim", "", "containerd 1.x's containerd-shim-runc-v2 (default: the one on PATH)")
	flag.StringVar(&scale, "scale", "1,10,20,50,100,150,200", "numbers of idle containers (per runtime) to sample memory at")
	flag.IntVar(&c.idle, "idle", 20, "containers whose shims give the idle per-shim memory (median); as many floor processes run")
	flag.DurationVar(&c.settle, "settle", 5*time.Second, "idle time before a memory sample")
	flag.DurationVar(&c.steady, "steady", 150*time.Second, "age of the idle shims when they are sampled again, past Go's two-minute forced collection")
	flag.StringVar(&c.busybox, "busybox", "/bin/busybox", "static busybox for the image")
	flag.StringVar(&c.only, "only", "", "run only these steps (comma-separated: memory, growth, lifecycle, exec, stdout, pods, upgrade)")
	flag.IntVar(&c.speed.lifecycle, "lifecycle", 30, "ctr run --rm of /bin/true per runtime")
	flag.IntVar(&c.speed.execs, "exec", 50, "ctr task exec of /bin/true per runtime")
	flag.IntVar(&c.speed.stdoutMiB, "throughput-mib", 1024, "MiB the container writes to stdout")
	flag.IntVar(&c.growth.execs, "growth-execs", 1000, "growth: execs into one shim's container")
	flag.IntVar(&c.growth.lifecycles, "growth-lifecycles", 100, "growth: containers run to completion in the same shim")
	flag.IntVar(&c.growth.stdoutMiB, "growth-stdout-mib", 1024, "growth: MiB an exec writes to stdout through the shim")
	flag.DurationVar(&c.growth.settle, "growth-settle", 75*time.Second, "growth: idle time before the sample after the work (runc-v2 frees memory every 30 s; a tether shim starts over at most once a minute)")
	flag.StringVar(&c.pod.containerd2, "containerd2-dir", "/var/cache/tether/containerd-v2.4.2", "containerd 2.x (containerd, ctr, containerd-shim-runc-v2) for the pod figures")
	flag.IntVar(&c.pod.timed, "pods", 30, "pods started (RunPodSandbox and a first container) and removed per runtime, timed")
	flag.StringVar(&podScale, "pod-scale", "1,20,50,100,200", "numbers of idle pods (per runtime) to sample memory at")
	flag.IntVar(&c.pod.idle, "idle-pods", 20, "idle pods per runtime whose memory gives the per-pod figure (a -pod-scale point)")
	flag.IntVar(&c.upgrades, "upgrades", 100, "live upgrades of one tether shim, timed")
	flag.StringVar(&c.logs, "logs", "", "keep containerd's logs (with the shims' own) in this directory")
	flag.IntVar(&c.stormUpgrades, "storm-upgrades", 50, "live upgrades of one tether shim during an exec storm, timed")
	flag.IntVar(&c.stormExecs, "storm-execs", 20, "`ctr task exec` at a time in the exec storm, each read slowly")
	flag.Parse()
	var err error
	if c.scale, err = ints(scale); err != nil {
		log.Fatalf("-scale: %v", err)
	}
	if c.pod.scale, err = ints(podScale); err != nil {
		log.Fatalf("-pod-scale: %v", err)
	}
	if !slices.Contains(c.scale, c.idle) || !slices.Contains(c.pod.scale, c.pod.idle) {
		log.Fatal("-idle must be a -scale point and -idle-pods a -pod-scale point")
	}
	if err := run(c); err != nil {
		log.Fatal(err)
	}
}

// runs says whether the run includes step.
func (c config) runs(step string) bool {
	return c.only == "" || slices.Contains(strings.Split(c.only, ","), step)
}

func ints(list string) ([]int, error) {
	var xs []int
	for _, s := range strings.Split(list, ",") {
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, err
		}
		xs = append(xs, n)
	}
	slices.Sort(xs)
	return xs, nil
}

func run(c config) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("bench needs root")
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "tether-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	c.tmp = dir
	if c.logs != "" {
		defer keepLogs(dir, c.logs)
	}
	bins, err := stageBinaries(c, dir)
	if err != nil {
		return err
	}
	ctdDir := filepath.Join(dir, "containerd")
	if err := os.Mkdir(ctdDir, 0o755); err != nil {
		return err
	}
	ctd, err := harness.Start(harness.Options{ShimDir: bins.shims, Dir: ctdDir, Namespace: "tether-bench"})
	if err != nil {
		return err
	}
	defer ctd.Stop()
	b := &bench{c: c, ctd: ctd, cpu: newCPUWatch(), bins: bins}
	defer b.cpu.stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	if err := ctd.ImportBusybox(ctx, c.busybox); err != nil {
		cancel()
		return err
	}
	cancel()

	s := &results.Samples{
		Date:     time.Now().UTC().Format("2006-01-02"),
		Machine:  machine(),
		Versions: versions(bins),
	}
	start := time.Now()
	steps := []struct {
		name string
		fn   func(*results.Samples) error
	}{
		{"memory", b.memory},
		{"growth", b.growth},
		{"lifecycle", b.lifecycle},
		{"exec", b.exec},
		{"stdout", b.stdout},
		{"pods", b.pods},
		{"upgrade", b.upgrade},
	}
	for _, st := range steps {
		if !c.runs(st.name) {
			continue
		}
		t := time.Now()
		if err := st.fn(s); err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
		log.Printf("%s done in %v", st.name, time.Since(t).Round(time.Second))
	}
	log.Printf("bench done in %v", time.Since(start).Round(time.Second))
	return write(c.out, s)
}

type bench struct {
	c    config
	ctd  *harness.Containerd
	cpu  *cpuWatch
	seq  int
	bins binaries
}

func (b *bench) id(prefix string) string {
	b.seq++
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), b.seq)
}

func (b *bench) ctr(args ...string) (harness.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return b.ctd.Ctr(ctx, nil, args...)
}

// runIdle starts an idle container of rt and returns its id.
func (b *bench) runIdle(rt runtimeUnderTest, prefix string, args ...string) (string, error) {
	id := b.id(prefix + "-" + rt.Name)
	full := append([]string{"run", "-d", "--runtime", rt.Runtime}, args...)
	_, err := b.ctr(append(full, harness.BusyboxImageName, id, "sleep", "1000000")...)
	return id, err
}

// remove kills and removes containers, leaving no error behind: the bench
// is done with them. ctr takes many at once: a ctr per container and step
// took ten minutes for 400 containers on a loaded machine.
func (b *bench) remove(ids []string) {
	for len(ids) > 0 {
		n := min(len(ids), 50)
		b.ctr(append([]string{"task", "rm", "-f"}, ids[:n]...)...)
		b.ctr(append([]string{"container", "rm"}, ids[:n]...)...)
		ids = ids[n:]
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// shimsOf lists the live shims named binary of this bench's containerd:
// re-parented to this process, unlike any other containerd's.
func shimsOf(binary string) []int {
	var pids []int
	self := os.Getpid()
	for _, pid := range harness.Pids() {
		if procmem.Parent(pid) == self && filepath.Base(harness.Cmdline(pid)[0]) == binary {
			pids = append(pids, pid)
		}
	}
	return pids
}

// shimFor is the shim named binary that serves id (its -id argument).
func shimFor(binary, id string) (int, error) {
	for _, pid := range harness.Pids() {
		args := harness.Cmdline(pid)
		if filepath.Base(args[0]) == binary && hasArg(args, "-id", id) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no %s serving %s", binary, id)
}

func hasArg(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}

func machine() string {
	var u unix.Utsname
	unix.Uname(&u)
	cpus := 0
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		cpus = strings.Count(string(data), "processor\t:")
	}
	var si unix.Sysinfo_t
	unix.Sysinfo(&si)
	return fmt.Sprintf("%s %s, %d CPUs, %d GiB", unix.ByteSliceToString(u.Sysname[:]), unix.ByteSliceToString(u.Release[:]),
		cpus, (uint64(si.Totalram)*uint64(si.Unit))>>30)
}

// versions records what was measured.
func versions(bins binaries) map[string]string {
	return map[string]string{
		"go":           runtime.Version(),
		"tether":       firstLine(filepath.Join(bins.shims, runtimes[0].Binary), "-v"),
		"runc-v2 shim": firstLine(filepath.Join(bins.shims, runtimes[1].Binary), "-v", "Version:"),
		"containerd":   firstLine("containerd", "--version"),
		"runc":         firstLine("runc", "--version"),
	}
}

// firstLine is the first line of name's output that contains want (or
// the first line), "unknown" if it fails.
func firstLine(name string, args ...string) string {
	want := ""
	if n := len(args); n > 0 && strings.HasSuffix(args[n-1], ":") {
		want, args = args[n-1], args[:n-1]
	}
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "unknown"
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, l := range lines {
		if want != "" && strings.Contains(l, want) {
			return strings.TrimSpace(l)
		}
	}
	return strings.TrimSpace(lines[0])
}

// keepLogs copies the containerds' logs under dir into logs.
func keepLogs(dir, logs string) {
	os.MkdirAll(logs, 0o755)
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "containerd.log" {
			rel, _ := filepath.Rel(dir, filepath.Dir(path))
			copyFile(path, filepath.Join(logs, strings.ReplaceAll(rel, "/", "-")+".log"))
		}
		return nil
	})
}

func write(dir string, s *results.Samples) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "samples.json"), data, 0o644); err != nil {
		return err
	}
	table := results.Markdown(s)
	fmt.Print(table)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(table), 0o644); err != nil {
		return err
	}
	for name, svg := range results.Charts(s) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(svg), 0o644); err != nil {
			return err
		}
	}
	return nil
}
