package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/integration/conformance/internal/build"
	"github.com/tether-shim/tether/integration/conformance/internal/nsinit"
	"github.com/tether-shim/tether/integration/conformance/internal/registry"
	"github.com/tether-shim/tether/integration/conformance/internal/report"
)

// A shim is the shim binary under test.
type shim struct {
	Name    string // NAME of containerd-shim-NAME-vN: the CRI suites' handler name
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
	return shim{Name: m[1], Label: m[1] + "-" + m[2], Runtime: "io.containerd." + m[1] + "." + m[2], Binary: abs}, nil
}

// A runner holds what every run shares.
type runner struct {
	self      string // this binary: the namespace's init and the containerd wrapper
	test2json string // go's test2json, which turns the test binary's output into events
	busybox   string // static busybox for the images
	criu      string // a working criu, or "" to skip the checkpoint tests
	runc      string // runc for the CRI suites' handlers
	tools     []byte // the static imagetools binary for the images
	ci        bool   // CI's selection: leave out the tests that never reach the shim
	// failpointShim is the shim under test's failpoint build, or "".
	failpointShim string
	filter        string // -test.run pattern for the tests to cover
	timeout       time.Duration
	out           string // results directory
	print         func(string)
}

// maxProcesses bounds how often a dying test binary is started again.
const maxProcesses = 10

// run runs the suite against one shim and returns every test's result, in
// the suite's order, skipped ones included.
func (rn *runner) run(ctx context.Context, s *build.Suite, sh shim) ([]report.Result, error) {
	name := s.Generation + "-" + sh.Label
	if s.Kind != build.KindClient {
		name = string(s.Kind) + "-" + name
	}
	out := filepath.Join(rn.out, name)
	if err := os.RemoveAll(out); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	// Short: the tests put unix sockets under TMPDIR (work/t).
	work, err := os.MkdirTemp("", "tcf-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	// User-namespaced containers (host uids 1000+) reach their rootfs under it.
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, err
	}
	r := &suiteRun{runner: rn, suite: s, shim: sh, work: work, out: out,
		ns: nsinit.Setup{Containerd: s.Containerd, Disabled: s.Disabled}}
	if r.env, err = rn.setup(s, sh, work); err != nil {
		return nil, err
	}
	// The CRI suites run in a network namespace of their own (pods on a
	// bridge there); the registry stand-in listens on its loopback.
	listen := func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
	if s.Kind != build.KindClient {
		if r.netns, err = nsinit.NewNetNS(); err != nil {
			return nil, err
		}
		defer r.netns.Close()
		inner := listen
		listen = func() (ln net.Listener, err error) {
			r.netns.Do(func() { ln, err = inner() })
			return ln, err
		}
	}
	regLog, err := os.Create(filepath.Join(out, "registry.log"))
	if err != nil {
		return nil, err
	}
	defer regLog.Close()
	ln, err := listen()
	if err != nil {
		return nil, err
	}
	reg, err := registry.Start(registry.Options{Busybox: rn.busybox, Tools: rn.tools, Listen: ln,
		Log: slog.New(slog.NewTextHandler(regLog, nil))})
	if err != nil {
		ln.Close()
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
	r.imageList = imageList
	r.env = append(r.env, "SSL_CERT_FILE="+caFile, "CONFORMANCE_IMAGE_LIST="+imageList,
		"HTTPS_PROXY=http://"+reg.Addr(), "https_proxy=http://"+reg.Addr(), "NO_PROXY=", "no_proxy=")
	if s.Kind != build.KindClient {
		if err := r.daemon(); err != nil {
			return nil, err
		}
	}
	cgroupsBefore := testCgroups()
	defer removeNewCgroups(cgroupsBefore)
	if s.Kind == build.KindCritest {
		return r.critest(ctx)
	}

	tests, err := rn.list(ctx, s)
	if err != nil {
		return nil, err
	}
	skips := map[string]string{}
	for t, why := range skipsFor(s) {
		if top, sub, ok := strings.Cut(t, "/"); ok {
			// Subtests are skipped through -test.skip; the test runs.
			r.subSkips = append(r.subSkips, t)
			rn.print(fmt.Sprintf("  SKIP %s/%s*: skip list: %s", top, sub, why))
			continue
		}
		skips[t] = "skip list: " + why
	}
	if rn.ci {
		for t, why := range shimlessFor(s) {
			skips[t] = "not in CI: " + why
		}
	}
	rn.print(fmt.Sprintf("== %s, %s (%s): %d tests", s.Label, sh.Runtime, sh.Binary, len(tests)))
	var todo []string
	for _, t := range tests {
		if why, skip := skips[t]; skip {
			rn.print(fmt.Sprintf("  SKIP %s: %s", t, why))
		} else {
			todo = append(todo, t)
		}
	}
	got := map[string]report.Result{}
	for n := 1; len(todo) > 0; n++ {
		outside, err := r.process(ctx, n, todo, func(res report.Result) {
			got[res.Test] = res
			rn.print("  " + res.String())
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
				res := report.Result{Test: t, Status: "FAIL", Reason: fmt.Sprintf("never ran: the test binary died %d times before it", n)}
				got[t] = res
				rn.print("  " + res.String())
			}
			break
		}
		if len(left) > 0 {
			slog.Warn("the test binary exited early; the rest go on in a new process", "left", len(left))
		}
		todo = left
	}
	if err := r.retryRacy(ctx, got); err != nil {
		return nil, err
	}
	var results []report.Result
	for _, t := range tests {
		if why, ok := skips[t]; ok {
			results = append(results, report.Result{Test: t, Status: "SKIP", Reason: why})
		} else {
			results = append(results, got[t])
		}
	}
	return results, writeReport(out, results)
}

// A suiteRun is one suite's run against one shim.
type suiteRun struct {
	*runner
	suite     *build.Suite
	shim      shim
	work, out string
	env       []string
	imageList string
	netns     *nsinit.NetNS // the CRI suites' network namespace
	subSkips  []string      // TEST/SUBTEST prefixes the skip list leaves out
	ns        nsinit.Setup  // what the namespace's init and the containerd wrapper do
}

// retryRacy runs each failed test that races upstream (racyFor) again,
// alone, up to racyRetries times; a pass replaces the failure, saying so.
func (r *suiteRun) retryRacy(ctx context.Context, got map[string]report.Result) error {
	for t, why := range racyFor(r.suite) {
		for try := 1; try <= racyRetries && got[t].Status == "FAIL"; try++ {
			first := got[t]
			_, err := r.process(ctx, 100+try, []string{t}, func(res report.Result) {
				if res.Status == "PASS" {
					res.Reason = fmt.Sprintf("on retry %d (racy upstream: %s; first: %s)", try, why, first.Reason)
				}
				got[t] = res
				r.print("  " + res.String())
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
func (rn *runner) setup(s *build.Suite, sh shim, work string) ([]string, error) {
	bin := filepath.Join(work, "bin")
	for _, d := range []string{bin, filepath.Join(work, "t")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	links := map[string]string{nsinit.WrapperName: rn.self}
	if s.BinDir != "" {
		links["ctr"] = filepath.Join(s.BinDir, "ctr")
		links["containerd-shim-runc-v2"] = s.RuncShim
	}
	if s.RuncFP != "" {
		links["runc-fp"] = s.RuncFP
	}
	if rn.criu != "" {
		links["criu"] = rn.criu
	}
	if s.Kind != build.KindClient && rn.runc != "" {
		links["runc"] = rn.runc
	}
	if s.FailpointShim != "" {
		links["containerd-shim-runc-fp-v1"] = s.FailpointShim
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
		"TMPDIR="+tmpDir(s, work),
		"TEST_RUNTIME="+sh.Runtime,
		"CONFORMANCE_ROOT="+filepath.Join(work, "root"),
		"CONFORMANCE_STATE="+filepath.Join(work, "state"),
		"CONFORMANCE_ADDRESS="+filepath.Join(work, "state", "containerd.sock"),
	), nil
}

// tmpDir is the suite's TMPDIR. The CRI suite's tests start daemons with
// sockets under t.TempDir(), whose names hold the test's: with any prefix
// longer than containerd's CI's /tmp, some are longer than a unix socket's
// path may be.
func tmpDir(s *build.Suite, work string) string {
	if s.Kind == build.KindClient {
		return filepath.Join(work, "t")
	}
	return "/tmp"
}

// list names the suite's top-level tests that match the filter (with
// -test.short, TestMain lists them without starting a daemon).
func (rn *runner) list(ctx context.Context, s *build.Suite) ([]string, error) {
	if s.Tests != nil {
		return rn.match(s.Tests)
	}
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

// match keeps the tests that match the filter, as -test.list would.
func (rn *runner) match(all []string) ([]string, error) {
	re, err := regexp.Compile(rn.filter)
	if err != nil {
		return nil, fmt.Errorf("-run: %w", err)
	}
	var tests []string
	for _, t := range all {
		if re.MatchString(t) {
			tests = append(tests, t)
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
func (r *suiteRun) process(ctx context.Context, n int, tests []string, got func(report.Result)) (string, error) {
	if err := r.freshDaemonDirs(); err != nil {
		return "", err
	}
	args := []string{"-t", "-p", string(r.suite.Kind), r.suite.TestBinary, "-test.v=test2json",
		"-test.timeout", r.timeoutFor().String(), "-test.run", "^(" + strings.Join(tests, "|") + ")$"}
	if len(r.subSkips) > 0 {
		// -test.skip matches level by level: one pattern per level.
		var tops, subs []string
		for _, t := range r.subSkips {
			top, sub, _ := strings.Cut(t, "/")
			tops, subs = append(tops, regexp.QuoteMeta(top)), append(subs, regexp.QuoteMeta(sub))
		}
		args = append(args, "-test.skip", "^("+strings.Join(tops, "|")+")$/^("+strings.Join(subs, "|")+")")
	}
	if r.suite.Kind == build.KindClient {
		args = append(args, "-test.root", "-address", filepath.Join(r.work, "state", "containerd.sock"))
		if r.criu == "" {
			args = append(args, "-no-criu")
		}
	} else {
		args = append(args, r.criFlags()...)
	}
	cmd := exec.CommandContext(ctx, r.test2json, args...)
	stdout, stderr, err := r.start(cmd, n)
	if err != nil {
		return "", err
	}
	defer stdout.Close()
	lines, foldErr := report.Fold(stdout, got)
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
	return strings.Join(lines, "\n") + "\n" + stderr.String(), nil
}

// freshDaemonDirs empties the daemon's root and state: each process starts
// its daemon afresh.
func (r *suiteRun) freshDaemonDirs() error {
	for _, d := range []string{"root", "state"} {
		if err := os.RemoveAll(filepath.Join(r.work, d)); err != nil {
			return err
		}
	}
	for _, d := range []string{"root", "state"} {
		if err := os.Mkdir(filepath.Join(r.work, d), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// start starts cmd under the namespace's init (in the run's network
// namespace, if it has one). Its stdout, read from the returned reader, is
// kept in events-N.json; its stderr goes to stderr-N.log and the returned
// tail. Closing the reader closes those files.
func (r *suiteRun) start(cmd *exec.Cmd, n int) (io.ReadCloser, *tail, error) {
	nsEnv, err := r.ns.Env()
	if err != nil {
		return nil, nil, err
	}
	nsinit.StartInit(r.self, cmd)
	if r.suite.Kind != build.KindClient {
		// critest makes shared memory segments "on the host" for its host
		// IPC tests: here, in an IPC namespace that ends with the run.
		cmd.SysProcAttr.Cloneflags |= unix.CLONE_NEWIPC
	}
	cmd.Dir, cmd.Env = r.suite.PkgDir, append(slices.Clone(r.env), nsEnv...)
	cmd.WaitDelay = 10 * time.Second
	events, err := os.Create(filepath.Join(r.out, fmt.Sprintf("events-%d.json", n)))
	if err != nil {
		return nil, nil, err
	}
	stderrLog, err := os.Create(filepath.Join(r.out, fmt.Sprintf("stderr-%d.log", n)))
	if err != nil {
		events.Close()
		return nil, nil, err
	}
	files := teeFiles{events, stderrLog}
	stderr := &tail{}
	cmd.Stderr = io.MultiWriter(stderrLog, stderr)
	pipe, err := cmd.StdoutPipe()
	if err == nil {
		if r.netns != nil {
			r.netns.Do(func() { err = cmd.Start() })
		} else {
			err = cmd.Start()
		}
	}
	if err != nil {
		files.Close()
		return nil, nil, fmt.Errorf("start the test binary: %w", err)
	}
	return struct {
		io.Reader
		io.Closer
	}{io.TeeReader(pipe, events), files}, stderr, nil
}

// teeFiles are a process's output files, closed together.
type teeFiles []*os.File

func (fs teeFiles) Close() error {
	var errs []error
	for _, f := range fs {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}
