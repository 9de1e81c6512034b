package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/tether-shim/tether/integration/conformance/internal/build"
	"github.com/tether-shim/tether/integration/conformance/internal/nsinit"
	"github.com/tether-shim/tether/integration/conformance/internal/report"
)

// The CRI suites' runtime handlers. The one under test is also the default
// (pods asked for with no handler get it), as containerd's CI makes the
// shim under test its default "runc" handler's type.
const (
	// failpointHandler is the handler containerd's failpoint tests ask
	// for: containerd's runc shim built with failpoint injection.
	failpointHandler = "runc-fp"
	// nriSocket is where the CRI suite's NRI tests find containerd's NRI
	// (script/test/utils.sh), in the run's private /run.
	nriSocket = "/var/run/nri-test.sock"
	// criRoot is the daemon's root as containerd's CI sets it, a bind
	// mount of the run's own in its mount namespace (the directory is made
	// on the host, empty, as a mount point).
	criRoot = "/var/lib/containerd-test"
)

// timeoutFor is the time limit of one test-binary process: a client-suite
// process runs for minutes, a CRI suite's for the whole suite.
func (r *suiteRun) timeoutFor() time.Duration {
	if r.suite.Kind == build.KindClient || r.timeout > 10*time.Minute {
		return r.timeout
	}
	return time.Hour
}

// daemon writes containerd's configuration for the CRI suites (as
// containerd's script/test/utils.sh and script/critest.sh write it, with
// the machine's quirks) and the CNI networks, and has the namespace's init
// run containerd with it.
func (r *suiteRun) daemon() error {
	cni := filepath.Join(r.work, "cni")
	fpCNI := filepath.Join(r.work, "cni-failpoint")
	cniBin := filepath.Join(r.work, "cni-bin")
	for _, d := range []string{cni, fpCNI, cniBin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if r.suite.FailpointCNI != "" {
		if err := os.Symlink(r.suite.FailpointCNI, filepath.Join(cniBin, "cni-bridge-fp")); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(cni, "10-containerd-net.conflist"),
		cniConfig("containerd-net", "bridge", "cni0", false), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(fpCNI, "10-containerd-net.conflist"),
		cniConfig("containerd-net-failpoint", "cni-bridge-fp", "cni-fp", true), 0o644); err != nil {
		return err
	}
	// The daemons the CRI suite's tests start with configurations of their
	// own run through the wrapper, which makes them import this: no
	// process here may lower its oom_score_adj.
	quirks := filepath.Join(r.work, "machine-quirks.toml")
	if err := os.WriteFile(quirks, []byte("version = 3\n[plugins.'io.containerd.cri.v1.runtime']\n  restrict_oom_score_adj = true\n"), 0o644); err != nil {
		return err
	}
	state := filepath.Join(r.work, "state")
	config := filepath.Join(r.work, "containerd-cri.toml")
	if err := os.WriteFile(config, []byte(r.criConfig(cni, fpCNI, cniBin)), 0o644); err != nil {
		return err
	}
	r.ns.Daemon = &nsinit.Daemon{
		Argv: []string{r.suite.Containerd, "--log-level", "debug", "--config", config,
			"--address", filepath.Join(state, "containerd.sock"),
			"--root", criRoot, "--state", state},
		Socket: filepath.Join(state, "containerd.sock"),
		Log:    filepath.Join(r.out, "containerd.log"),
	}
	// Tests that start a containerd of their own with a default
	// configuration find the CNI where containerd's CI installs it. The
	// root is where containerd's CI has it: the user-namespace tests check
	// that ID-mapped mounts work there, and skip if not. host-local's
	// addresses are kept in its default /var/lib/cni (a test looks there),
	// a tmpfs of the run's own.
	r.ns.Mounts = []nsinit.Mount{{Target: "/opt"}, {Source: "/usr/lib/cni", Target: "/opt/cni/bin"},
		{Source: cni, Target: "/etc/cni/net.d"}, {Source: filepath.Join(r.work, "root"), Target: criRoot},
		{Target: "/var/lib/cni"}}
	// containerd's CI installs its loopback checker in /usr/local/bin;
	// here it is added there for the run only.
	if r.suite.Loopback != "" {
		upper := filepath.Join(r.work, "usr-local-bin")
		if err := os.MkdirAll(upper, 0o755); err != nil {
			return err
		}
		if err := os.Symlink(r.suite.Loopback, filepath.Join(upper, "loopback-v2")); err != nil {
			return err
		}
		r.ns.Mounts = append(r.ns.Mounts, nsinit.Mount{Target: "/usr/local/bin", Upper: upper})
	}
	r.ns.Import = quirks
	return nil
}

// criConfig is containerd 2.x's configuration: the CRI with a handler for
// containerd's runc shim, one for the shim under test (the default), and
// the failpoint handler; NRI on for the NRI tests.
func (r *suiteRun) criConfig(cni, fpCNI, cniBin string) string {
	const rt = "plugins.'io.containerd.cri.v1.runtime'"
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("version = 3")
	w("[%s]", rt)
	// No process here may lower its oom_score_adj.
	w("  restrict_oom_score_adj = true")
	w("  drain_exec_sync_io_timeout = '10s'")
	w("  [%s.cni]", rt)
	w("    bin_dirs = ['/usr/lib/cni', '%s']", cniBin)
	w("    conf_dir = '%s'", cni)
	w("  [%s.containerd]", rt)
	w("    default_runtime_name = '%s'", r.shim.Name)
	handlers := map[string][2]string{
		"runc":           {"io.containerd.runc.v2", r.suite.RuncShim},
		r.shim.Name:      {r.shim.Runtime, r.shim.Binary},
		failpointHandler: {"io.containerd.runc-fp.v1", r.suite.FailpointShim},
	}
	// The failpoint tests run on the shim under test where it has a
	// failpoint build (tether's counterpart of containerd's runc-fp).
	if r.failpointShim != "" && r.shim.Name != "runc" {
		fp, err := filepath.Abs(r.failpointShim)
		if err == nil {
			handlers[failpointHandler] = [2]string{r.shim.Runtime, fp}
		}
	}
	names := make([]string, 0, len(handlers))
	for n := range handlers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		h := handlers[n]
		if h[1] == "" {
			continue
		}
		w("  [%s.containerd.runtimes.'%s']", rt, n)
		w("    runtime_type = '%s'", h[0])
		w("    runtime_path = '%s'", h[1])
		if n == failpointHandler {
			w("    cni_conf_dir = '%s'", fpCNI)
			w("    cni_max_conf_num = 1")
			w("    pod_annotations = ['io.containerd.runtime.v2.shim.failpoint.*']")
		}
	}
	w("[plugins.'io.containerd.nri.v1.nri']")
	w("  disable = false")
	w("  socket_path = '%s'", nriSocket)
	w("  plugin_path = '/no/pre-launched/nri/plugins'")
	w("[plugins.'io.containerd.snapshotter.v1.overlayfs']")
	w("  slow_chown = true")
	return b.String()
}

// cniConfig is a bridge network as containerd's CI sets it up
// (script/setup/install-cni, and the failpoint one of script/test/utils.sh),
// its addresses recorded in /var/lib/cni (the run's own: a mount).
func cniConfig(name, plugin, bridge string, podAnnotations bool) []byte {
	bridgeConf := map[string]any{
		"type": plugin, "bridge": bridge, "isGateway": true, "ipMasq": true, "promiscMode": true,
		"ipam": map[string]any{
			"type":   "host-local",
			"ranges": [][]map[string]string{{{"subnet": "10.88.0.0/16"}}, {{"subnet": "2001:4860:4860::/64"}}},
			"routes": []map[string]string{{"dst": "0.0.0.0/0"}, {"dst": "::/0"}},
		},
	}
	if podAnnotations {
		bridgeConf["capabilities"] = map[string]bool{"io.kubernetes.cri.pod-annotations": true}
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       name,
		"plugins": []any{bridgeConf,
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}}},
	}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		panic(err) // maps of strings and bools always marshal
	}
	return data
}

// criFlags are the CRI integration suite's flags (script/test/cri-integration.sh).
func (r *suiteRun) criFlags() []string {
	return []string{
		"--cri-endpoint=unix://" + filepath.Join(r.work, "state", "containerd.sock"),
		"--runtime-handler=" + r.shim.Name,
		"--containerd-bin=containerd",
		"--build-dir=" + filepath.Join(r.work, "bin"),
		"--image-list=" + r.imageList,
	}
}

// critest runs critest once over every spec (but those the skip list and
// the filter leave out) and reads its ginkgo JSON report.
func (r *suiteRun) critest(ctx context.Context) ([]report.Result, error) {
	if err := r.freshDaemonDirs(); err != nil {
		return nil, err
	}
	skips := skipsFor(r.suite)
	var skipRes []string
	for spec := range skips {
		skipRes = append(skipRes, regexp.QuoteMeta(spec))
	}
	sort.Strings(skipRes)
	jsonReport := filepath.Join(r.out, "critest.json")
	sock := "unix://" + filepath.Join(r.work, "state", "containerd.sock")
	args := []string{"-test.timeout", r.timeoutFor().String(),
		"-runtime-endpoint=" + sock, "-image-endpoint=" + sock,
		"-ginkgo.json-report=" + jsonReport, "-ginkgo.v", "-ginkgo.no-color",
		"-ginkgo.focus=" + r.filter, "-nri-socket=" + nriSocket}
	if len(skipRes) > 0 {
		args = append(args, "-ginkgo.skip="+strings.Join(skipRes, "|"))
	}
	r.print(fmt.Sprintf("== %s, %s (%s)", r.suite.Label, r.shim.Runtime, r.shim.Binary))
	cmd := exec.CommandContext(ctx, r.suite.TestBinary, args...)
	stdout, stderr, err := r.start(cmd, 1)
	if err != nil {
		return nil, err
	}
	_, copyErr := io.Copy(io.Discard, stdout)
	stdout.Close()
	waitErr := cmd.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var exit *exec.ExitError
	if copyErr != nil || (waitErr != nil && !errors.As(waitErr, &exit)) {
		return nil, errors.Join(copyErr, waitErr)
	}
	f, err := os.Open(jsonReport)
	if err != nil {
		return nil, fmt.Errorf("critest wrote no report (%v); its last words:\n%s", err, stderr)
	}
	defer f.Close()
	results, err := report.Ginkgo(f)
	if err != nil {
		return nil, err
	}
	for i, res := range results {
		if why, ok := skips[res.Test]; ok && res.Status == "SKIP" {
			results[i].Reason = "skip list: " + why
		}
		r.print("  " + results[i].String())
	}
	return results, writeReport(r.out, results)
}
