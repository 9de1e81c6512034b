// Command conformance runs containerd's own client integration suite
// (integration/client, written by the containerd project) against a shim,
// offline, on Debian's containerd 1.6 and on containerd 2.x, and prints one
// line per test and a summary; with -compare, containerd's runc shim and the
// shim side by side, as a table.
//
// For each containerd it builds the suite's test binary once from that
// version's own source (Debian's source package of the installed containerd;
// containerd 2.x's Go module) with build-only edits: the test daemon's root,
// state and socket come from the environment, 1.6 drops a Windows-only
// requirement, 2.x's image list can be set from the environment. The tests
// pull from a stand-in registry in this process (package registry); the test
// binary, the daemons it starts and every shim and container run in a PID
// and mount namespace of their own, with a private /run, under an init that
// is this binary again. If the test binary dies, the test it was in fails
// and the rest go on in a new process.
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
)

type config struct {
	generations []string
	shim        string // a shim binary, or "runc" for each containerd's own
	compare     bool
	cache       string
	ctd2Dir     string
	rebuild     bool
	runner      runner
}

func main() {
	multiCall()
	var c config
	var generations string
	flag.StringVar(&generations, "containerd", "1.6,2.4.2", "containerd generations to run on: 1.6 (Debian's) and/or 2.x.y")
	flag.StringVar(&c.shim, "shim", "bin/containerd-shim-tether-v2", `shim binary under test (containerd-shim-NAME-vN), or "runc" for each containerd's runc shim`)
	flag.BoolVar(&c.compare, "compare", false, "run containerd's runc shim and -shim side by side and print a table")
	flag.StringVar(&c.runner.filter, "run", ".", "only the tests matching this pattern")
	flag.StringVar(&c.cache, "cache", "/var/cache/tether", "cache: the suites' builds go in its conformance/ dir")
	flag.StringVar(&c.ctd2Dir, "containerd2-dir", "", "containerd 2.x's containerd, ctr and runc shim (default CACHE/containerd-vVERSION)")
	flag.BoolVar(&c.rebuild, "rebuild", false, "rebuild the suites' test binaries")
	flag.StringVar(&c.runner.busybox, "busybox", "/bin/busybox", "static busybox for the images")
	flag.StringVar(&c.runner.criu, "criu", os.Getenv("TETHER_CRIU"), "criu for the checkpoint tests (default $TETHER_CRIU, else criu on PATH; they skip if it does not work)")
	flag.DurationVar(&c.runner.timeout, "timeout", 10*time.Minute, "time limit of one test-binary process")
	flag.StringVar(&c.runner.out, "out", "bin/conformance", "results: per run, each failing test's output, the events, the registry's log")
	flag.Parse()
	c.generations = strings.Split(generations, ",")
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

// run runs every generation's suite against the shims and reports whether
// any test failed.
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

	var summaries []string
	failed := false
	for _, g := range c.generations {
		ctd2Dir := c.ctd2Dir
		if ctd2Dir == "" {
			ctd2Dir = filepath.Join(c.cache, "containerd-v"+g)
		}
		s, err := prepareSuite(ctx, g, filepath.Join(c.cache, "conformance"), ctd2Dir, c.rebuild)
		if err != nil {
			return false, err
		}
		var shims []shim
		for _, b := range shimBinaries(c, s) {
			sh, err := newShim(b)
			if err != nil {
				return false, err
			}
			shims = append(shims, sh)
		}
		var labels []string
		var runs [][]result
		for _, sh := range shims {
			start := time.Now()
			results, err := rn.run(ctx, s, sh)
			if err != nil {
				return false, fmt.Errorf("containerd %s, %s: %w", s.Version, sh.Label, err)
			}
			n := count(results)
			failed = failed || n.failed > 0
			summary := fmt.Sprintf("containerd %s, %s: %s in %s", s.Version, sh.Label, n, time.Since(start).Round(time.Second))
			rn.print(summary)
			summaries = append(summaries, summary)
			labels, runs = append(labels, sh.Label), append(runs, results)
		}
		if c.compare {
			fmt.Printf("\ncontainerd %s\n\n", s.Version)
			table(os.Stdout, labels, runs)
			fmt.Println()
		}
	}
	if len(summaries) > 1 {
		fmt.Println(strings.Join(summaries, "\n"))
	}
	return failed, nil
}

// shimBinaries are the shims to run a suite against.
func shimBinaries(c config, s *suite) []string {
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
