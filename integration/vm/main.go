// Command vm runs tether's integration suites inside a Linux VM that looks
// like a Kubernetes node: Debian's stock kernel, systemd as PID 1, cgroup
// v2, Debian's containerd 1.6 and runc, booted under qemu (KVM where it
// boots a stock kernel, else TCG). Every boot starts from the same clean
// image, built once per machine from Debian's packages and cached.
//
//	vm image            build the image (if needed) and print its directory
//	vm check            run the VM's share of the suites (plan.go), fail on a failure
//	vm shell            boot it with a root shell on this terminal (Ctrl-A X quits)
//	vm run SCRIPT       boot it, run a bash script, print its output, exit with its status
//
// check, shell and run share the suites' binaries into the guest (built
// here: the guest has no Go) at /mnt/job, results come out at -out
// (/mnt/out); shell also shares the source tree at /mnt/tree.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type options struct {
	cache, out, ctd2Dir, ctd2, runc, criu string
	containerd, drivers, run, skip        string
	cpus, memMiB                          int
	kernelArgs                            string
	timeout                               time.Duration
	rebuild, stress                       bool
}

func main() {
	var o options
	flag.StringVar(&o.cache, "cache", "/var/cache/tether", "the machine's build cache: the image goes in vm-KEY")
	flag.StringVar(&o.out, "out", "bin/vm", "results: the suites' events, the console, the guest's journal")
	flag.StringVar(&o.ctd2, "containerd2", "2.4.2", "containerd 2.x version (its binaries in CACHE/containerd-vVERSION)")
	flag.StringVar(&o.ctd2Dir, "containerd2-dir", "", "containerd 2.x's binaries (default CACHE/containerd-vVERSION)")
	flag.StringVar(&o.runc, "runc", os.Getenv("TETHER_RUNC"), "runc for containerd 2.x's features (make runc)")
	flag.StringVar(&o.criu, "criu", os.Getenv("TETHER_CRIU"), "CRIU for the checkpoint tests (make criu)")
	flag.StringVar(&o.containerd, "containerd", "", "containerd generations to run on (default 1.6 and -containerd2)")
	flag.StringVar(&o.drivers, "driver", "cgroupfs,systemd", "cgroup drivers to run with")
	flag.StringVar(&o.run, "run", "", "check: only the tests matching this -test.run pattern (default: plan.go's VM tests)")
	flag.StringVar(&o.skip, "skip", "", "check: a -test.skip pattern")
	flag.IntVar(&o.cpus, "cpus", 2, "the VM's CPUs")
	flag.IntVar(&o.memMiB, "mem", 3072, "the VM's memory (MiB)")
	flag.DurationVar(&o.timeout, "timeout", 60*time.Minute, "the VM is killed after this long")
	flag.BoolVar(&o.rebuild, "rebuild", false, "build the image again")
	flag.BoolVar(&o.stress, "stress", false, "check: the suites at full size (TETHER_STRESS=1, as make stress)")
	flag.StringVar(&o.kernelArgs, "append", "", "more kernel arguments, e.g. 'systemd.show_status=1' to see the boot on the console")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: vm [flags] image|check|shell|run SCRIPT")
		flag.PrintDefaults()
	}
	flag.Parse()
	if o.ctd2Dir == "" {
		o.ctd2Dir = filepath.Join(o.cache, "containerd-v"+o.ctd2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, flag.Args())
	stop()
	var fail failure
	switch {
	case errors.As(err, &fail):
		os.Exit(1)
	case err != nil:
		slog.Error("vm", "err", err)
		os.Exit(2)
	}
}

// failure is a run whose tests (or script) failed: reported already.
type failure struct{ what string }

func (f failure) Error() string { return f.what }

func run(ctx context.Context, o options, args []string) error {
	if len(args) == 0 {
		flag.Usage()
		return errors.New("no command")
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (mmdebstrap, 9p shares of root's files)")
	}
	im, err := ensureImage(ctx, o.cache, o.rebuild)
	if err != nil {
		return err
	}
	if args[0] == "image" {
		fmt.Println(im.Dir)
		return nil
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "tether-vm-job-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	job := job{dir: dir}
	if o.out, err = filepath.Abs(o.out); err != nil {
		return err
	}
	if err := os.RemoveAll(o.out); err != nil {
		return err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	m := &machine{image: im, disk: job.disk(), cpus: o.cpus, memMiB: o.memMiB, kernelArgs: o.kernelArgs, shares: []share{
		{Tag: "job", Path: job.share(), ReadOnly: true}, {Tag: "out", Path: o.out}}}
	bins := binaries{moduleRoot: root, ctd2Dir: o.ctd2Dir, ctd2: o.ctd2, runc: o.runc, criu: o.criu}
	var lines []string
	switch args[0] {
	case "check":
		lines = checkLines(o)
	case "run":
		if len(args) != 2 {
			return errors.New("usage: vm run SCRIPT")
		}
		script, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		if err := os.MkdirAll(job.share(), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(job.share(), "script.sh"), script, 0o644); err != nil {
			return err
		}
		lines = []string{"run_script /mnt/job/script.sh"}
	case "shell":
		m.shares = append(m.shares, share{Tag: "tree", Path: root})
	default:
		flag.Usage()
		return fmt.Errorf("unknown command %q", args[0])
	}
	start := time.Now()
	if err := job.prepare(ctx, bins, lines); err != nil {
		return err
	}
	slog.Info("job ready", "took", time.Since(start).Round(100*time.Millisecond))
	m.accel = chooseAccel(ctx, im)
	slog.Info("booting the VM", "image", im.Dir, "kernel", im.Kernel, "accel", m.accel, "cpus", m.cpus, "mem_mib", m.memMiB)
	if args[0] == "shell" {
		fmt.Println("root shell on the VM's console once it is up; `it -c 2.4.2 -d systemd -test.run TestOOMKill -test.v` runs a test; Ctrl-A X quits")
		return m.shell(ctx)
	}
	return boot(ctx, o, m, args[0])
}

// checkLines are run.sh's suite lines for vm check: the plan's VM tests
// (or -run) on each containerd generation and cgroup driver.
func checkLines(o options) []string {
	pattern := o.run
	if pattern == "" {
		pattern = testPattern(vmTests())
	}
	generations := containerdGenerations(o.ctd2)
	if o.containerd != "" {
		generations = strings.Split(o.containerd, ",")
	}
	var lines []string
	if o.stress {
		lines = append(lines, "export TETHER_STRESS=1")
	}
	for _, g := range generations {
		for _, d := range strings.Split(o.drivers, ",") {
			lines = append(lines, suiteLine(g, d, pattern, o.skip))
		}
	}
	return lines
}

// boot runs the job to its end and reports.
func boot(ctx context.Context, o options, m *machine, command string) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	r := newReporter(os.Stdout, o.out, knownFailures())
	console := filepath.Join(o.out, "console.log")
	state, err := m.boot(ctx, console, r.line)
	total := time.Since(r.start)
	if state != nil {
		r.CPU = state.UserTime() + state.SystemTime()
	}
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("%w (the VM was killed after %v)", err, o.timeout)
	}
	if command == "run" {
		status, _ := os.ReadFile(filepath.Join(o.out, "script.status"))
		fmt.Printf("script exited with status %s after %v (VM boot %v); output in %s\n", strings.TrimSpace(string(status)), total.Round(time.Second), r.Boot.Round(100*time.Millisecond), o.out)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(status)) != "0" {
			return failure{"script failed"}
		}
		return nil
	}
	fmt.Println()
	r.table(os.Stdout, total)
	if f, ferr := os.Create(filepath.Join(o.out, "summary.txt")); ferr == nil {
		r.table(f, total)
		f.Close()
	}
	if err != nil {
		return fmt.Errorf("%w; console: %s", err, console)
	}
	if r.failed() {
		return failure{"vm check failed"}
	}
	return nil
}

// moduleRoot is the tether module's root: the working directory or above.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if data, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && strings.Contains(string(data), "module github.com/tether-shim/tether\n") {
			return d, nil
		}
	}
	return "", fmt.Errorf("%s is not inside the tether module", dir)
}
