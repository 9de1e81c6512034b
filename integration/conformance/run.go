package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/tether-shim/tether/integration/conformance/internal/registry"
)

// A shim is the shim binary under test.
type shim struct {
	Label   string // short name in reports: runc-v2, tether-v2
	Runtime string // containerd runtime name: io.containerd.NAME.vN
	Binary  string
}

// newShim names a containerd-shim-NAME-vN binary's runtime.
func newShim(binary string) (shim, error) {
	abs, err := filepath.Abs(binary)
	if err != nil {
		return shim{}, err
	}
	if _, err := os.Stat(abs); err != nil {
		return shim{}, fmt.Errorf("shim binary: %w", err)
	}
	m := regexp.MustCompile(`^containerd-shim-([a-z0-9_]+)-(v\d+)$`).FindStringSubmatch(filepath.Base(abs))
	if m == nil {
		return shim{}, fmt.Errorf("%s: a shim binary is named containerd-shim-NAME-vN", binary)
	}
	return shim{Label: m[1] + "-" + m[2], Runtime: "io.containerd." + m[1] + "." + m[2], Binary: abs}, nil
}

// A runner holds what every run shares.
type runner struct {
	self      string // this binary: the namespace's init and the containerd wrapper
	test2json string // go's test2json, which turns the test binary's output into events
	busybox   string // static busybox for the images
	criu      string // a working criu, or "" to skip the checkpoint tests
	filter    string // -test.run pattern for the tests to cover
	timeout   time.Duration
	out       string // results directory
	print     func(string)
}

// maxProcesses bounds how often a dying test binary is started again.
const maxProcesses = 10

// run runs the suite against one shim and returns every test's result, in
// the suite's order, skipped ones included.
func (rn *runner) run(ctx context.Context, s *suite, sh shim) ([]result, error) {
	name := s.Generation + "-" + sh.Label
	out := filepath.Join(rn.out, name)
	if err := os.RemoveAll(out); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "tether-conformance-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	// User-namespaced containers (host uids 1000+) reach their rootfs under it.
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, err
	}
	env, err := rn.setup(s, sh, work)
	if err != nil {
		return nil, err
	}
	regLog, err := os.Create(filepath.Join(out, "registry.log"))
	if err != nil {
		return nil, err
	}
	defer regLog.Close()
	reg, err := registry.Start(rn.busybox, slog.New(slog.NewTextHandler(regLog, nil)))
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	caFile, imageList := filepath.Join(work, "ca.pem"), filepath.Join(work, "image-list.toml")
	if err := os.WriteFile(caFile, reg.CA, 0o644); err != nil {
		return nil, err
	}
	// containerd 2.x's busybox by digest: upstream's digest cannot be made here.
	if err := os.WriteFile(imageList, fmt.Appendf(nil, "BusyBoxByDigest = %q\n", "ghcr.io/containerd/busybox@"+reg.BusyboxDigest), 0o644); err != nil {
		return nil, err
	}
	env = append(env, "SSL_CERT_FILE="+caFile, "CONFORMANCE_IMAGE_LIST="+imageList,
		"HTTPS_PROXY=http://"+reg.Addr(), "https_proxy=http://"+reg.Addr(), "NO_PROXY=", "no_proxy=")

	tests, err := rn.list(ctx, s)
	if err != nil {
		return nil, err
	}
	skips := skipsFor(s.Generation)
	rn.print(fmt.Sprintf("== containerd %s, %s (%s): %d tests", s.Version, sh.Runtime, sh.Binary, len(tests)))
	var todo []string
	for _, t := range tests {
		if why, skip := skips[t]; skip {
			rn.print(fmt.Sprintf("  SKIP %s: skip list: %s", t, why))
		} else {
			todo = append(todo, t)
		}
	}
	cgroupsBefore := testCgroups()
	defer removeNewCgroups(cgroupsBefore)

	got := map[string]result{}
	for n := 1; len(todo) > 0; n++ {
		outside, err := rn.process(ctx, s, work, env, out, n, todo, func(r result) {
			got[r.Test] = r
			rn.print("  " + r.String())
		})
		if err != nil {
			return nil, err
		}
		left := slices.DeleteFunc(slices.Clone(todo), func(t string) bool { _, ok := got[t]; return ok })
		if len(left) == len(todo) && n == 1 {
			return nil, fmt.Errorf("the test binary ran none of %d tests (see %s); its last words:\n%s", len(todo), out, outside)
		}
		if len(left) == len(todo) || (len(left) > 0 && n == maxProcesses) {
			for _, t := range left {
				r := result{Test: t, Status: "FAIL", Reason: fmt.Sprintf("never ran: the test binary died %d times before it", n)}
				got[t] = r
				rn.print("  " + r.String())
			}
			break
		}
		if len(left) > 0 {
			slog.Warn("the test binary exited early; the rest go on in a new process", "left", len(left))
		}
		todo = left
	}
	if err := rn.retryRacy(ctx, s, work, env, out, got); err != nil {
		return nil, err
	}
	var results []result
	for _, t := range tests {
		if why, ok := skips[t]; ok {
			results = append(results, result{Test: t, Status: "SKIP", Reason: "skip list: " + why})
		} else {
			results = append(results, got[t])
		}
	}
	return results, writeReport(out, results)
}

// retryRacy runs each failed test that races upstream (racyFor) again,
// alone, up to racyRetries times; a pass replaces the failure, saying so.
func (rn *runner) retryRacy(ctx context.Context, s *suite, work string, env []string, out string, got map[string]result) error {
	for t, why := range racyFor(s.Generation) {
		for try := 1; try <= racyRetries && got[t].Status == "FAIL"; try++ {
			first := got[t]
			_, err := rn.process(ctx, s, work, env, out, 100+try, []string{t}, func(r result) {
				if r.Status == "PASS" {
					r.Reason = fmt.Sprintf("on retry %d (racy upstream: %s; first: %s)", try, why, first.Reason)
				}
				got[t] = r
				rn.print("  " + r.String())
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// setup fills work/bin, first on the suite's PATH: the containerd wrapper,
// the shim under its runtime's binary name, that generation's ctr, runc shim
// and failpoint runc, and criu. It returns the suite's environment.
func (rn *runner) setup(s *suite, sh shim, work string) ([]string, error) {
	bin := filepath.Join(work, "bin")
	for _, d := range []string{bin, filepath.Join(work, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	links := map[string]string{wrapperName: rn.self}
	if s.BinDir != "" {
		links["ctr"] = filepath.Join(s.BinDir, "ctr")
		links["containerd-shim-runc-v2"] = s.RuncShim
		links["runc-fp"] = s.RuncFP
	}
	if rn.criu != "" {
		links["criu"] = rn.criu
	}
	links[filepath.Base(sh.Binary)] = sh.Binary
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(bin, name)); err != nil {
			return nil, err
		}
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return k == "SSL_CERT_DIR" || k == "PATH" || k == "TMPDIR" || strings.HasSuffix(strings.ToLower(k), "_proxy")
	})
	return append(env,
		"PATH="+bin+":"+os.Getenv("PATH"),
		"TMPDIR="+filepath.Join(work, "tmp"),
		"TEST_RUNTIME="+sh.Runtime,
		"CONFORMANCE_ROOT="+filepath.Join(work, "root"),
		"CONFORMANCE_STATE="+filepath.Join(work, "state"),
		"CONFORMANCE_ADDRESS="+filepath.Join(work, "state", "containerd.sock"),
		envContainerd+"="+s.Containerd,
		envDisabled+"="+strings.Join(s.Disabled, ","),
	), nil
}

// list names the suite's top-level tests that match the filter (with
// -test.short, TestMain lists them without starting a daemon).
func (rn *runner) list(ctx context.Context, s *suite) ([]string, error) {
	cmd := exec.CommandContext(ctx, s.TestBinary, "-test.short", "-test.list", rn.filter)
	cmd.Dir = s.PkgDir
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("list the suite's tests: %w", err)
	}
	var tests []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Test") {
			tests = append(tests, l)
		}
	}
	if len(tests) == 0 {
		return nil, fmt.Errorf("no test matches %q", rn.filter)
	}
	return tests, nil
}

// process runs the test binary once, in its own namespaces, on the given
// tests, and reports results as they come. It returns the last lines printed
// outside any test, and the tail of stderr.
func (rn *runner) process(ctx context.Context, s *suite, work string, env []string, out string, n int, tests []string, report func(result)) (string, error) {
	// Each process starts its daemon afresh.
	for _, d := range []string{"root", "state"} {
		if err := os.RemoveAll(filepath.Join(work, d)); err != nil {
			return "", err
		}
	}
	if err := os.Mkdir(filepath.Join(work, "state"), 0o755); err != nil {
		return "", err
	}
	args := []string{"-t", "-p", "client", s.TestBinary, "-test.v=test2json", "-test.root",
		"-test.timeout", rn.timeout.String(), "-test.run", "^(" + strings.Join(tests, "|") + ")$",
		"-address", filepath.Join(work, "state", "containerd.sock")}
	if rn.criu == "" {
		args = append(args, "-no-criu")
	}
	cmd := exec.CommandContext(ctx, rn.test2json, args...)
	startInit(rn.self, cmd)
	cmd.Dir, cmd.Env = s.PkgDir, env
	cmd.WaitDelay = 10 * time.Second
	events, err := os.Create(filepath.Join(out, fmt.Sprintf("events-%d.json", n)))
	if err != nil {
		return "", err
	}
	defer events.Close()
	var stderr tail
	stderrLog, err := os.Create(filepath.Join(out, fmt.Sprintf("stderr-%d.log", n)))
	if err != nil {
		return "", err
	}
	defer stderrLog.Close()
	cmd.Stderr = io.MultiWriter(stderrLog, &stderr)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start the test binary: %w", err)
	}
	outside, foldErr := fold(io.TeeReader(stdout, events), report)
	waitErr := cmd.Wait()
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	if foldErr != nil {
		return "", fmt.Errorf("read the test binary's events: %w", foldErr)
	}
	var exit *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &exit) {
		return "", waitErr
	}
	return strings.Join(outside, "\n") + "\n" + stderr.String(), nil
}

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
func writeReport(out string, results []result) error {
	var summary, failures bytes.Buffer
	for _, r := range results {
		fmt.Fprintln(&summary, r)
		if r.Status == "FAIL" {
			fmt.Fprintf(&failures, "===== %s\n%s\n\n", r.Test, strings.Join(r.Output, "\n"))
		}
	}
	fmt.Fprintln(&summary, count(results))
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
