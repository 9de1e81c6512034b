// Command conformance runs the field's own test suites against a shim,
// offline, and prints one line per test and a summary; with -compare,
// containerd's runc shim and the shim side by side, as a table per suite:
//   - containerd's client integration suite (integration/client, written by
//     the containerd project), on Debian's containerd 1.6 and on containerd 2.x;
//   - containerd 2.x's CRI integration suite (integration/*_test.go,
//     cri-integration.test), through a CRI runtime handler of the shim's type;
//   - cri-tools' critest, the CRI validation suite, against containerd 2.x's
//     CRI, the same way.
//
// Package build builds each suite once per machine from its own pinned
// source (Debian's source package of the installed containerd, containerd
// 2.x's and cri-tools' Go modules), with build-only edits to the client
// suite (the test daemon's root, state and socket come from the environment;
// 1.6 drops a Windows-only requirement; 2.x's image list can be set from the
// environment) and none to the CRI suites. The tests pull from a stand-in
// registry in this process (package registry), images built from busybox
// and this module's imagetools. The test binary, the daemons and every shim
// and container run in a PID and mount namespace of their own, with a
// private /run, under an init that is this binary again; the CRI suites
// also in a network namespace of their own, where the init keeps
// containerd with its CRI running (and starts it again after a test kills
// it, as containerd's CI does) and pods get addresses from a private CNI
// bridge. If a test binary dies, the test it was in fails and the rest go
// on in a new process.
//
// Exit status: 0 if no test failed (skip list aside), 1 if some did, 2 if the
// suite could not run.
package main

import (
	"context"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tether-shim/tether/integration/conformance/internal/build"
	"github.com/tether-shim/tether/integration/conformance/internal/nsinit"
	"github.com/tether-shim/tether/integration/conformance/internal/report"
)

type config struct {
	suites      []build.Kind
	generations []string
	criTools    string
	shim        string // a shim binary, or "runc" for each containerd's runc shim
	compare     bool
	cache       string
	ctd2Dir     string
	rebuild     bool
	runner      runner
}

func main() {
	nsinit.MultiCall()
	var c config
	var generations, suites string
	flag.StringVar(&suites, "suites", "client,cri,critest", "suites to run: client (containerd's integration/client), cri (containerd 2.x's CRI integration suite), critest (cri-tools)")
	flag.StringVar(&generations, "containerd", "1.6,2.4.2", "containerd generations to run on: 1.6 (Debian's) and/or 2.x.y; the CRI suites run on the 2.x ones")
	flag.StringVar(&c.criTools, "cri-tools", "v1.37.0", "cri-tools version whose critest runs")
	flag.StringVar(&c.shim, "shim", "bin/containerd-shim-tether-v2", `shim binary under test (containerd-shim-NAME-vN), or "runc" for each containerd's runc shim`)
	flag.BoolVar(&c.compare, "compare", false, "run containerd's runc shim and -shim side by side and print a table")
	flag.StringVar(&c.runner.filter, "run", ".", "only the tests matching this pattern (critest: specs whose full text matches)")
	flag.StringVar(&c.cache, "cache", "/var/cache/tether", "cache: the suites' builds go in its conformance/ dir")
	flag.StringVar(&c.ctd2Dir, "containerd2-dir", "", "containerd 2.x's containerd, ctr and runc shim (default CACHE/containerd-vVERSION)")
	flag.BoolVar(&c.rebuild, "rebuild", false, "rebuild the suites' test binaries")
	flag.StringVar(&c.runner.busybox, "busybox", "/bin/busybox", "static busybox for the images")
	flag.StringVar(&c.runner.criu, "criu", os.Getenv("TETHER_CRIU"), "criu for the checkpoint tests (default $TETHER_CRIU, else criu on PATH; they skip if it does not work)")
	flag.StringVar(&c.runner.failpointShim, "failpoint-shim", "", "the shim under test built with failpoints (tether: -tags failpoint): the CRI suite's handler runc-fp in its column; without it, containerd's failpoint runc shim in every column")
	flag.StringVar(&c.runner.runc, "runc", os.Getenv("TETHER_RUNC"), "runc for the CRI suites (default $TETHER_RUNC, else runc on PATH)")
	flag.BoolVar(&c.runner.ci, "ci", false, "CI's selection: leave out the tests that never reach the shim under test (skip.go's shimlessFor)")
	flag.DurationVar(&c.runner.timeout, "timeout", 10*time.Minute, "time limit of one test-binary process (the CRI suites: of the whole run)")
	flag.StringVar(&c.runner.out, "out", "bin/conformance", "results: per run, each failing test's output, the events, the registry's log")
	flag.Parse()
	c.generations = strings.Split(generations, ",")
	for _, k := range strings.Split(suites, ",") {
		c.suites = append(c.suites, build.Kind(k))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	failed, err := run(ctx, c)
	stop()
	if err != nil {
		slog.Error("conformance", "err", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

// run runs every suite against the shims and reports whether any test
// failed.
func run(ctx context.Context, c config) (bool, error) {
	if os.Geteuid() != 0 {
		return false, errors.New("needs root")
	}
	rn := &c.runner
	rn.print = func(s string) { fmt.Println(s) }
	if err := checkStatic(rn.busybox); err != nil {
		return false, err
	}
	var err error
	if rn.self, err = os.Executable(); err != nil {
		return false, err
	}
	if rn.out, err = filepath.Abs(rn.out); err != nil {
		return false, err
	}
	out, err := exec.CommandContext(ctx, "go", "tool", "-n", "test2json").Output()
	if err != nil {
		return false, fmt.Errorf("go tool -n test2json: %w", err)
	}
	rn.test2json = strings.TrimSpace(string(out))
	rn.criu = findCriu(ctx, rn.criu)
	if rn.tools, err = buildTools(ctx); err != nil {
		return false, err
	}
	if rn.runc == "" {
		rn.runc, _ = exec.LookPath("runc")
	}

	var summaries []string
	failed := false
	for _, s := range c.plan(ctx) {
		if s.err != nil {
			return false, s.err
		}
		var labels []string
		var runs [][]report.Result
		for _, b := range shimBinaries(c, s.Suite) {
			sh, err := newShim(b)
			if err != nil {
				return false, err
			}
			start := time.Now()
			results, err := rn.run(ctx, s.Suite, sh)
			if err != nil {
				return false, fmt.Errorf("%s, %s: %w", s.Label, sh.Label, err)
			}
			n := report.Count(results)
			failed = failed || n.Failed > 0
			summary := fmt.Sprintf("%s, %s: %s in %s", s.Label, sh.Label, n, time.Since(start).Round(time.Second))
			rn.print(summary)
			summaries = append(summaries, summary)
			labels, runs = append(labels, sh.Label), append(runs, results)
		}
		if c.compare {
			fmt.Printf("\n%s\n\n", s.Label)
			report.Table(os.Stdout, labels, runs)
			fmt.Println()
		}
	}
	if len(summaries) > 1 {
		fmt.Println(strings.Join(summaries, "\n"))
	}
	return failed, nil
}

// planned is a suite to run, or why it cannot be built.
type planned struct {
	*build.Suite
	err error
}

// plan builds (or finds in cache) each suite to run, in order: the client
// suite on each generation, then the CRI suite and critest on each 2.x one.
// It stops at the first that fails to build.
func (c config) plan(ctx context.Context) []planned {
	var plan []planned
	cache := filepath.Join(c.cache, "conformance")
	for _, kind := range c.suites {
		for _, g := range c.generations {
			ctd2Dir := c.ctd2Dir
			if ctd2Dir == "" {
				ctd2Dir = filepath.Join(c.cache, "containerd-v"+g)
			}
			var s *build.Suite
			var err error
			switch kind {
			case build.KindClient:
				s, err = build.Client(ctx, g, cache, ctd2Dir, c.rebuild)
			case build.KindCRI, build.KindCritest:
				if g == "1.6" {
					continue // the CRI suites are containerd 2.x's
				}
				if kind == build.KindCRI {
					s, err = build.CRI(ctx, g, cache, ctd2Dir, c.rebuild)
				} else {
					s, err = build.Critest(ctx, c.criTools, g, cache, ctd2Dir, c.rebuild)
				}
			default:
				err = fmt.Errorf("no suite %q (client, cri, critest)", kind)
			}
			plan = append(plan, planned{s, err})
			if err != nil {
				return plan
			}
		}
	}
	return plan
}

// shimBinaries are the shims to run a suite against.
func shimBinaries(c config, s *build.Suite) []string {
	switch {
	case c.shim == "runc":
		return []string{s.RuncShim}
	case c.compare:
		return []string{s.RuncShim, c.shim}
	default:
		return []string{c.shim}
	}
}

// findCriu returns a criu that passes `criu check`, or "" (then the
// checkpoint tests skip).
func findCriu(ctx context.Context, criu string) string {
	if criu == "" {
		criu, _ = exec.LookPath("criu")
	}
	if criu == "" {
		slog.Warn("no criu: the checkpoint tests skip")
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, criu, "check").CombinedOutput(); err != nil {
		slog.Warn("criu does not work here: the checkpoint tests skip", "criu", criu, "err", err, "output", strings.TrimSpace(string(out)))
		return ""
	}
	abs, err := filepath.Abs(criu)
	if err != nil {
		return ""
	}
	return abs
}

// checkStatic fails unless path is a statically linked executable: the
// images run it with nothing else in them.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("busybox: %w (apt-get install busybox-static)", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: the images need a static busybox (apt-get install busybox-static)", path)
		}
	}
	return nil
}

// buildTools builds the images' imagetools binary (static), from this
// module's source in the current directory.
func buildTools(ctx context.Context) ([]byte, error) {
	dir, err := os.MkdirTemp("", "tether-imagetools-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "imagetools")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin,
		"github.com/tether-shim/tether/integration/conformance/imagetools")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build the images' tools: %w\n%s", err, out)
	}
	return os.ReadFile(bin)
}
