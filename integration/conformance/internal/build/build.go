// Package build builds the conformance suites once per machine from their
// own pinned sources, into a cache keyed by version and recipe (built in a
// .tmp directory, then renamed): containerd's client suite for containerd
// 1.6 (Debian's source package) and 2.x (its Go module), containerd 2.x's CRI
// integration suite with its failpoint shim and CNI plugin, and cri-tools'
// critest. Only build-only edits are made to the sources.
package build

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
)

// Kind is which suite a Suite is.
type Kind string

const (
	KindClient  Kind = "client"  // containerd's integration/client
	KindCRI     Kind = "cri"     // containerd's CRI integration suite (integration/*_test.go)
	KindCritest Kind = "critest" // cri-tools' critest
)

// A Suite is a built test binary and what it runs with.
type Suite struct {
	Kind       Kind
	Generation string // containerd: "1.6" (Debian's) or a 2.x version such as "2.4.2"
	Version    string // the daemon's version: its Debian package version, or vX.Y.Z
	Containerd string // the daemon
	RuncShim   string // containerd's runc shim of the same generation
	BinDir     string // that generation's ctr and runc shim, for PATH ("" for 1.6: /usr/bin)
	TestBinary string
	PkgDir     string // the test package's source directory: the tests run in it, as under go test
	RuncFP     string // the failpoint runc wrapper some 2.x client tests name as BinaryName
	// Disabled are the daemon's CRI plugins, turned off for the client
	// suite: it does not use them, and without CNI they only slow the
	// daemon down.
	Disabled []string
	// FailpointShim and FailpointCNI are containerd's failpoint shim
	// (containerd-shim-runc-fp-v1) and CNI plugin (cni-bridge-fp), which
	// the CRI suite's failpoint tests name (handler "runc-fp").
	FailpointShim, FailpointCNI string
	// Loopback is containerd's loopback-v2 checker, which containerd's CI
	// installs in /usr/local/bin for TestIssue10244LoopbackV2.
	Loopback string
	// Tests are the suite's top-level tests (CRI suite: read from its
	// source, since its TestMain needs a daemon even to list them).
	Tests []string
	// Label names the suite in reports: "client 1.6", "cri v2.4.2", ...
	Label string
}

// cached runs build in a fresh dir+".tmp" and moves it to dir, unless dir
// already holds a complete build of this recipe. A lock keeps concurrent
// runs from building the same thing twice.
func cached(dir, recipe string, rebuild bool, build func(tmp string) error) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	stamp := filepath.Join(dir, ".complete")
	if got, err := os.ReadFile(stamp); err == nil && string(got) == recipe && !rebuild {
		return nil
	}
	slog.Info("building a conformance suite (once; cached)", "dir", dir)
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	if err := build(tmp); err != nil {
		return fmt.Errorf("build the suite in %s: %w", tmp, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), []byte(recipe), 0o644); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// aptSource unpacks Debian's source package pkg=version into dest. It uses an
// apt state of its own under work, with deb-src entries for the Debian
// archives this machine's apt sources name, so the system's is untouched.
func aptSource(ctx context.Context, work, pkg, version, dest string) error {
	out, err := exec.CommandContext(ctx, "apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE) $(COMPONENT)",
		"Identifier: Packages", "Origin: Debian").Output()
	if err != nil {
		return fmt.Errorf("apt-get indextargets: %w", err)
	}
	seen := map[string]bool{}
	var list strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" && !seen[line] {
			seen[line] = true
			fmt.Fprintf(&list, "deb-src %s\n", line)
		}
	}
	if list.Len() == 0 {
		return errors.New("no Debian archive in the apt sources (run apt-get update)")
	}
	apt := filepath.Join(work, "apt")
	for _, d := range []string{"lists/partial", "archives/partial", "dl"} {
		if err := os.MkdirAll(filepath.Join(apt, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(apt, "sources.list"), []byte(list.String()), 0o644); err != nil {
		return err
	}
	opts := []string{"-qq", "-o", "Dir::Etc::SourceList=" + filepath.Join(apt, "sources.list"),
		"-o", "Dir::Etc::SourceParts=/nonexistent", "-o", "Dir::State::Lists=" + filepath.Join(apt, "lists"),
		"-o", "Dir::Cache=" + apt, "-o", "Dir::Cache::Archives=" + filepath.Join(apt, "archives"),
		"-o", "APT::Sandbox::User=root"}
	if err := buildStep(ctx, "", "apt-get", append(opts, "update")...); err != nil {
		return err
	}
	dl := filepath.Join(apt, "dl")
	if err := buildStep(ctx, dl, "apt-get", append(opts, "source", "--download-only", pkg+"="+version)...); err != nil {
		return err
	}
	// apt-get checked the files against the signed Sources index.
	upstream := version
	if _, v, ok := strings.Cut(version, ":"); ok {
		upstream = v
	}
	return buildStep(ctx, "", "dpkg-source", "--no-check", "-x", filepath.Join(dl, pkg+"_"+upstream+".dsc"), dest)
}

// daemonPaths is the suite's block of daemon root, state and socket
// constants (/var/lib/containerd-test, /run/containerd-test).
var daemonPaths = regexp.MustCompile(`const \(\s*defaultRoot\s*=\s*("[^"]*")\s*defaultState\s*=\s*("[^"]*")\s*defaultAddress\s*=\s*("[^"]*")\s*\)`)

// redirectDaemonPaths turns those constants into variables that the run's
// environment can point into its private directory.
func redirectDaemonPaths(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if !daemonPaths.Match(data) {
		return fmt.Errorf("%s: no defaultRoot/defaultState/defaultAddress block to redirect", file)
	}
	data = daemonPaths.ReplaceAll(data, []byte(`var (
	defaultRoot    = conformanceEnv("CONFORMANCE_ROOT", $1)
	defaultState   = conformanceEnv("CONFORMANCE_STATE", $2)
	defaultAddress = conformanceEnv("CONFORMANCE_ADDRESS", $3)
)`))
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return err
	}
	pkg := regexp.MustCompile(`(?m)^package (\w+)`).FindSubmatch(data)
	if pkg == nil {
		return fmt.Errorf("%s: no package clause", file)
	}
	helper := strings.TrimSuffix(file, ".go") + "_conformance.go"
	if strings.HasSuffix(file, "_test.go") {
		helper = strings.TrimSuffix(file, "_test.go") + "_conformance_test.go"
	}
	return os.WriteFile(helper, []byte(fmt.Sprintf(`package %s

import "os"

// conformanceEnv (added by tether's conformance runner) moves the test
// daemon's root, state and socket into the run's private directory.
func conformanceEnv(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
`, pkg[1])), 0o644)
}

// edit replaces old with new in file, failing if old is not there.
func edit(file, old, new string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if !bytes.Contains(data, []byte(old)) {
		return fmt.Errorf("%s: %q not found", file, old)
	}
	return os.WriteFile(file, bytes.Replace(data, []byte(old), []byte(new), 1), 0o644)
}

// buildStep runs a build step, its output going to stderr.
func buildStep(ctx context.Context, dir string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, os.Stderr, os.Stderr
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

// moduleSource copies a Go module's source (module@version, from the module
// proxy) to dest, writable.
func moduleSource(ctx context.Context, work, module, dest string) error {
	var mod struct{ Dir, Error string }
	var stdout bytes.Buffer
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", module)
	cmd.Dir, cmd.Stdout, cmd.Stderr = work, &stdout, os.Stderr
	runErr := cmd.Run()
	if err := json.Unmarshal(stdout.Bytes(), &mod); err != nil || mod.Dir == "" {
		return fmt.Errorf("go mod download %s: %v %v %s", module, runErr, err, mod.Error)
	}
	if err := buildStep(ctx, "", "cp", "-a", mod.Dir, dest); err != nil {
		return err
	}
	return buildStep(ctx, "", "chmod", "-R", "u+w", dest)
}

// checkContainerd2 fails unless a 2.x suite's daemon, runc shim and ctr
// are built.
func checkContainerd2(s *Suite) error {
	for _, b := range []string{s.Containerd, s.RuncShim, filepath.Join(s.BinDir, "ctr")} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("containerd %s not built (make containerd2): %w", s.Version, err)
		}
	}
	return nil
}
