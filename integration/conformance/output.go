package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tether-shim/tether/integration/conformance/internal/report"
)

// tail keeps the last 4 KiB written to it.
type tail struct{ b []byte }

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tail) String() string { return string(t.b) }

// writeReport writes summary.txt (a line per test) and failures.txt (each
// failed test's output).
func writeReport(out string, results []report.Result) error {
	var summary, failures bytes.Buffer
	for _, r := range results {
		fmt.Fprintln(&summary, r)
		if r.Status == "FAIL" {
			fmt.Fprintf(&failures, "===== %s\n%s\n\n", r.Test, strings.Join(r.Output, "\n"))
		}
	}
	fmt.Fprintln(&summary, report.Count(results))
	if err := os.WriteFile(filepath.Join(out, "summary.txt"), summary.Bytes(), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "failures.txt"), failures.Bytes(), 0o644)
}

// testCgroups lists the cgroups under the suite's namespace, "testing".
func testCgroups() map[string]bool {
	found := map[string]bool{}
	filepath.WalkDir("/sys/fs/cgroup", func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if strings.Count(path, "/") > 8 {
			return fs.SkipDir
		}
		if strings.Contains(path, "/testing") {
			found[path] = true
		}
		return nil
	})
	return found
}

// removeNewCgroups removes the (empty) cgroups a run left: those of a
// failed test's containers, killed with the namespace.
func removeNewCgroups(before map[string]bool) {
	var paths []string
	for p := range testCgroups() {
		if !before[p] {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	for _, p := range slices.Backward(paths) { // children first
		os.Remove(p)
	}
}
