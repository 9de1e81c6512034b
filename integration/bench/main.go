// Command bench measures tether (io.containerd.tether.v2) side by side with
// containerd's runc shim (io.containerd.runc.v2) on one private containerd,
// interleaving the two so machine noise hits both, and reports each figure
// with the ratio tether/runc-v2: a Markdown table, the raw samples as JSON
// and a chart of shim memory against the number of containers (SVG).
//
// It runs as a child subreaper: the shims re-parent to it, so it can read
// each shim's CPU time from /proc after it exited and before reaping it.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/integration/harness"
)

// runtimes are compared in this order; tether is always first.
var runtimes = []runtimeUnderTest{
	{Name: "tether", Runtime: harness.Runtime, Binary: "containerd-shim-tether-v2"},
	{Name: "runc-v2", Runtime: "io.containerd.runc.v2", Binary: "containerd-shim-runc-v2"},
}

type runtimeUnderTest struct {
	Name    string // short name in the report
	Runtime string // containerd runtime name
	Binary  string // shim binary name
}

type config struct {
	out        string
	shimDir    string
	scale      []int // memory sample points (containers per runtime)
	idle       int   // containers whose shims give the idle per-shim figure
	lifecycle  int
	execs      int
	throughput int // MiB written to stdout
	settle     time.Duration
	steady     time.Duration // age of the idle shims at their second sample
	busybox    string
	// pod figures, on containerd 2.x
	containerd2 string // directory with containerd, ctr and containerd-shim-runc-v2
	upgrades    int    // live upgrades of one tether shim, timed
	// stormUpgrades are timed upgrades during an exec storm of stormExecs
	// clients at a time.
	stormUpgrades, stormExecs int
	only                      string // steps to run; all when empty
	tmp                       string // the run's own scratch directory
	pods                      int    // pods started and removed per runtime, timed
	idlePods                  int    // idle pods per runtime whose memory is sampled
}

func main() {
	var c config
	var scale string
	flag.StringVar(&c.out, "out", "bench", "directory for results.md, samples.json and memory.svg")
	flag.StringVar(&c.shimDir, "shim-dir", "bin", "directory holding the containerd-shim-tether-v2 to measure")
	flag.StringVar(&scale, "scale", "1,10,20,50,100,150,200", "numbers of idle containers (per runtime) to sample memory at")
	flag.IntVar(&c.idle, "idle", 20, "containers whose shims give the idle per-shim memory (median)")
	flag.IntVar(&c.lifecycle, "lifecycle", 30, "ctr run --rm of /bin/true per runtime")
	flag.IntVar(&c.execs, "exec", 50, "ctr task exec of /bin/true per runtime")
	flag.IntVar(&c.throughput, "throughput-mib", 1024, "MiB the container writes to stdout")
	flag.DurationVar(&c.settle, "settle", 5*time.Second, "idle time before a memory sample")
	flag.DurationVar(&c.steady, "steady", 150*time.Second, "age of the idle shims when they are sampled again, past Go's two-minute forced collection")
	flag.StringVar(&c.busybox, "busybox", "/bin/busybox", "static busybox for the image")
	flag.StringVar(&c.containerd2, "containerd2-dir", "/var/cache/tether/containerd-v2.4.2", "containerd 2.x (containerd, ctr, containerd-shim-runc-v2) for the pod figures")
	flag.StringVar(&c.only, "only", "", "run only these steps (comma-separated: memory, lifecycle, exec, stdout, pods, upgrade)")
	flag.IntVar(&c.upgrades, "upgrades", 100, "live upgrades of one tether shim, timed")
	flag.IntVar(&c.stormUpgrades, "storm-upgrades", 50, "live upgrades of one tether shim during an exec storm, timed")
	flag.IntVar(&c.stormExecs, "storm-execs", 20, "`ctr task exec` at a time in the exec storm, each read slowly")
	flag.IntVar(&c.pods, "pods", 30, "pods started (RunPodSandbox and a first container) per runtime")
	flag.IntVar(&c.idlePods, "idle-pods", 10, "idle pods per runtime whose shim and pause/holder memory is sampled")
	flag.Parse()
	for _, s := range strings.Split(scale, ",") {
		n, err := strconv.Atoi(s)
		if err != nil {
			log.Fatalf("-scale: %v", err)
		}
		c.scale = append(c.scale, n)
	}
	if err := run(c); err != nil {
		log.Fatal(err)
	}
}

// Samples are everything measured, for samples.json.
type Samples struct {
	Date      string                        `json:"date"`
	Machine   string                        `json:"machine"`
	Versions  map[string]string             `json:"versions"`
	Idle      map[string][]ShimMemory       `json:"idle_per_shim"`
	Steady    map[string][]ShimMemory       `json:"steady_idle_per_shim"`
	SteadyAge string                        `json:"steady_idle_age"`
	Scale     map[string][]ScalePoint       `json:"memory_at_scale"`
	Lifecycle map[string][]float64          `json:"lifecycle_ms"`
	Exec      map[string][]float64          `json:"exec_ms"`
	Stdout    map[string]float64            `json:"stdout_mb_per_s"`
	CPU       map[string]float64            `json:"shim_cpu_ms_over_lifecycle"`
	Extra     map[string]map[string]float64 `json:"extra,omitempty"`
	// UpgradePauseMs are the pauses of tether's live upgrades.
	UpgradePauseMs []float64 `json:"upgrade_pause_ms,omitempty"`
	// StormUpgradePauseMs are the pauses of live upgrades during an exec
	// storm of StormConcurrency slow-reading clients at a time, which ran
	// StormExecs execs, StormExecsFailed of them failing.
	StormUpgradePauseMs []float64 `json:"storm_upgrade_pause_ms,omitempty"`
	StormConcurrency    int       `json:"storm_concurrency,omitempty"`
	StormExecs          int       `json:"storm_execs,omitempty"`
	StormExecsFailed    int       `json:"storm_execs_failed,omitempty"`
	// StormGivenUp counts the tries of those upgrades given up and tried
	// again, by why (the shim's log).
	StormGivenUp map[string]int `json:"storm_tries_given_up,omitempty"`
	// Pods are the pod figures on containerd 2.x: tether without a pause
	// container against runc-v2 with one.
	Pods map[string]*PodSamples `json:"pods,omitempty"`
}

// ShimMemory is one shim's memory, from /proc/PID/smaps_rollup.
type ShimMemory struct {
	Pid    int `json:"pid"`
	RSSKiB int `json:"rss_kib"`
	PSSKiB int `json:"pss_kib"`
}

// ScalePoint is the total memory of one runtime's shims with n containers.
type ScalePoint struct {
	Containers int `json:"containers"`
	Shims      int `json:"shims"`
	RSSKiB     int `json:"rss_kib"`
	PSSKiB     int `json:"pss_kib"`
}

func run(c config) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("bench needs root")
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return err
	}
	shimDir, err := filepath.Abs(c.shimDir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(shimDir, "containerd-shim-tether-v2")); err != nil {
		return fmt.Errorf("no tether in %s (make build): %w", shimDir, err)
	}
	dir, err := os.MkdirTemp("", "tether-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	c.tmp = dir
	ctd, err := harness.Start(harness.Options{ShimDir: shimDir, Dir: dir, Namespace: "tether-bench"})
	if err != nil {
		return err
	}
	defer ctd.Stop()
	b := &bench{c: c, ctd: ctd, cpu: newCPUWatch(), shimDir: shimDir}
	defer b.cpu.stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	if err := ctd.ImportBusybox(ctx, c.busybox); err != nil {
		cancel()
		return err
	}
	cancel()

	s := &Samples{
		Date:      time.Now().UTC().Format("2006-01-02"),
		Machine:   machine(),
		Versions:  versions(shimDir),
		Idle:      map[string][]ShimMemory{},
		Steady:    map[string][]ShimMemory{},
		Scale:     map[string][]ScalePoint{},
		Lifecycle: map[string][]float64{},
		Exec:      map[string][]float64{},
		Stdout:    map[string]float64{},
		CPU:       map[string]float64{},
	}
	start := time.Now()
	steps := []struct {
		name string
		fn   func(*Samples) error
	}{
		{"memory", b.memory},
		{"lifecycle", b.lifecycle},
		{"exec", b.exec},
		{"stdout", b.stdout},
		{"pods", b.pods},
		{"upgrade", b.upgrade},
	}
	for _, st := range steps {
		if c.only != "" && !slices.Contains(strings.Split(c.only, ","), st.name) {
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
	c       config
	ctd     *harness.Containerd
	cpu     *cpuWatch
	seq     int
	shimDir string // absolute: where tether's binary is
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

// memory starts idle containers one runtime after the other, up to the
// largest scale point, sampling every shim's memory at each point.
func (b *bench) memory(s *Samples) error {
	var ids []string
	defer func() {
		for _, id := range ids {
			b.ctr("task", "kill", "-s", "SIGKILL", id)
		}
		for _, id := range ids {
			b.ctr("task", "rm", "-f", id)
			b.ctr("container", "rm", id)
		}
	}()
	n := 0
	var idleSince time.Time
	for _, point := range b.c.scale {
		for ; n < point; n++ {
			for _, rt := range runtimes {
				id := b.id("idle-" + rt.Name)
				if _, err := b.ctr("run", "-d", "--runtime", rt.Runtime, harness.BusyboxImageName, id, "sleep", "1000000"); err != nil {
					return err
				}
				ids = append(ids, id)
			}
		}
		if point == b.c.idle {
			idleSince = time.Now()
		}
		time.Sleep(b.c.settle)
		for _, rt := range runtimes {
			shims := shimMemory(rt.Binary)
			p := ScalePoint{Containers: point, Shims: len(shims)}
			for _, m := range shims {
				p.RSSKiB += m.RSSKiB
				p.PSSKiB += m.PSSKiB
			}
			s.Scale[rt.Name] = append(s.Scale[rt.Name], p)
			if point == b.c.idle {
				s.Idle[rt.Name] = shims
			}
			log.Printf("memory: %s, %d containers: %d shims, RSS %d KiB, PSS %d KiB", rt.Name, point, len(shims), p.RSSKiB, p.PSSKiB)
		}
		if point == b.c.idle {
			// A shim idles for hours: sample the same shims again once
			// they are old enough for the collector's periodic run.
			time.Sleep(time.Until(idleSince.Add(b.c.steady)))
			s.SteadyAge = b.c.steady.String()
			for _, rt := range runtimes {
				s.Steady[rt.Name] = shimMemory(rt.Binary)
				log.Printf("memory: %s, %d containers after %v: median RSS %.0f KiB, PSS %.0f KiB", rt.Name, point, b.c.steady,
					memStat(s.Steady[rt.Name], false), memStat(s.Steady[rt.Name], true))
			}
		}
	}
	return nil
}

// lifecycle times `ctr run --rm` of /bin/true, runtimes alternating, and
// adds up the CPU time of the shims that served those runs.
func (b *bench) lifecycle(s *Samples) error {
	b.cpu.reset()
	for i := 0; i < b.c.lifecycle; i++ {
		for _, rt := range runtimes {
			t := time.Now()
			if _, err := b.ctr("run", "--rm", "--runtime", rt.Runtime, harness.BusyboxImageName, b.id("life-"+rt.Name), "true"); err != nil {
				return err
			}
			s.Lifecycle[rt.Name] = append(s.Lifecycle[rt.Name], ms(time.Since(t)))
		}
	}
	// The last shims may still be on their way out.
	time.Sleep(2 * time.Second)
	for _, rt := range runtimes {
		cpu, n := b.cpu.total(rt.Binary)
		if n != b.c.lifecycle {
			log.Printf("lifecycle: CPU of %d %s shims seen, %d runs", n, rt.Name, b.c.lifecycle)
		}
		s.CPU[rt.Name] = cpu
	}
	return nil
}

// exec times `ctr task exec` of /bin/true into a running container.
func (b *bench) exec(s *Samples) error {
	ids := map[string]string{}
	for _, rt := range runtimes {
		id := b.id("exec-" + rt.Name)
		if _, err := b.ctr("run", "-d", "--runtime", rt.Runtime, harness.BusyboxImageName, id, "sleep", "1000000"); err != nil {
			return err
		}
		ids[rt.Name] = id
		defer func() {
			b.ctr("task", "rm", "-f", id)
			b.ctr("container", "rm", id)
		}()
	}
	for i := 0; i < b.c.execs; i++ {
		for _, rt := range runtimes {
			t := time.Now()
			if _, err := b.ctr("task", "exec", "--exec-id", fmt.Sprintf("x%d", i), ids[rt.Name], "true"); err != nil {
				return err
			}
			s.Exec[rt.Name] = append(s.Exec[rt.Name], ms(time.Since(t)))
		}
	}
	return nil
}

// stdout times a container writing the throughput size to stdout, read by
// ctr (and counted here), twice per runtime, alternating; the better run counts.
func (b *bench) stdout(s *Samples) error {
	for round := 0; round < 2; round++ {
		for _, rt := range runtimes {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			cmd := b.ctd.CtrCommand(ctx, "run", "--rm", "--runtime", rt.Runtime, harness.BusyboxImageName, b.id("out-"+rt.Name),
				"dd", "if=/dev/zero", "bs=1M", "count="+strconv.Itoa(b.c.throughput))
			var n counter
			cmd.Stdout = &n
			cmd.Stderr = io.Discard
			t := time.Now()
			err := cmd.Run()
			d := time.Since(t)
			cancel()
			if err != nil {
				return err
			}
			if int(n) != b.c.throughput<<20 {
				return fmt.Errorf("%s: %d bytes arrived, want %d", rt.Name, n, b.c.throughput<<20)
			}
			mbps := float64(n) / 1e6 / d.Seconds()
			if mbps > s.Stdout[rt.Name] {
				s.Stdout[rt.Name] = mbps
			}
			log.Printf("stdout: %s %.0f MB/s", rt.Name, mbps)
		}
	}
	return nil
}

type counter int64

func (c *counter) Write(p []byte) (int, error) { *c += counter(len(p)); return len(p), nil }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// shimMemory reads RSS and PSS of every process running binary.
func shimMemory(binary string) []ShimMemory {
	var out []ShimMemory
	for _, pid := range pidsOf(binary) {
		if m := memoryOf(pid); m.Pid != 0 {
			out = append(out, m)
		}
	}
	return out
}

// memoryOf reads a process's RSS and PSS from /proc/PID/smaps_rollup; Pid
// is 0 if it cannot.
func memoryOf(pid int) ShimMemory {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return ShimMemory{}
	}
	m := ShimMemory{Pid: pid}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "Rss:":
			m.RSSKiB = v
		case "Pss:":
			m.PSSKiB = v
		}
	}
	return m
}

// pidsOf lists the live shims named binary of this bench's containerd:
// re-parented to this process, unlike any other containerd's.
func pidsOf(binary string) []int {
	var pids []int
	self := os.Getpid()
	for _, pid := range harness.Pids() {
		if parent(pid) == self && filepath.Base(harness.Cmdline(pid)[0]) == binary {
			pids = append(pids, pid)
		}
	}
	return pids
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
func versions(shimDir string) map[string]string {
	v := map[string]string{"go": runtime.Version()}
	first := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return "unknown"
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	v["tether"] = first(filepath.Join(shimDir, "containerd-shim-tether-v2"), "-v")
	v["runc-v2 shim"] = first("containerd-shim-runc-v2", "-v")
	if p, err := exec.LookPath("containerd-shim-runc-v2"); err == nil {
		out, _ := exec.Command(p, "-v").CombinedOutput()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "Version:") {
				v["runc-v2 shim"] = strings.TrimSpace(l)
			}
		}
	}
	v["containerd"] = first("containerd", "--version")
	v["runc"] = first("runc", "--version")
	return v
}

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(p*float64(len(s)-1) + 0.5)
	return s[i]
}

func write(dir string, s *Samples) error {
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
	table := markdown(s)
	fmt.Print(table)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(table), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "memory.svg"), []byte(chart(s)), 0o644)
}
