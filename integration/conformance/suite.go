package main

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

// recipe names the build edits below; changing them changes it, which
// rebuilds every cached test binary.
const recipe = "r1"

// A suite is containerd's integration/client test binary for one containerd
// generation, built from that version's own source, and what it runs with.
type suite struct {
	Generation string // "1.6" (Debian's containerd) or a 2.x version such as "2.4.2"
	Version    string // the daemon's version: its Debian package version, or vX.Y.Z
	Containerd string // the daemon the tests start
	RuncShim   string // containerd's runc shim of the same generation
	BinDir     string // that generation's ctr and runc shim, for PATH ("" for 1.6: /usr/bin)
	TestBinary string
	PkgDir     string // the test package's source directory: the tests run in it, as under go test
	RuncFP     string // the failpoint runc wrapper some 2.x tests name as BinaryName
	// Disabled are the daemon's CRI plugins, turned off: the client suite
	// does not use them, and without CNI they only slow the daemon down.
	Disabled []string
}

// prepareSuite finds containerd of the given generation and builds (or finds
// in cache) its client test binary.
func prepareSuite(ctx context.Context, generation, cache, ctd2Dir string, rebuild bool) (*suite, error) {
	if generation == "1.6" {
		return prepare16(ctx, cache, rebuild)
	}
	if !regexp.MustCompile(`^2\.\d+\.\d+$`).MatchString(generation) {
		return nil, fmt.Errorf("containerd generation %q: want 1.6 or a 2.x.y version", generation)
	}
	return prepare2(ctx, generation, cache, ctd2Dir, rebuild)
}

// prepare16 builds the suite from Debian's source package of the installed
// containerd, so the tests match the daemon they run against.
func prepare16(ctx context.Context, cache string, rebuild bool) (*suite, error) {
	daemon, err := exec.LookPath("containerd")
	if err != nil {
		return nil, fmt.Errorf("containerd 1.6 not installed (apt-get install containerd): %w", err)
	}
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Version}", "containerd").Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-query containerd: %w", err)
	}
	version := string(out)
	if _, v, ok := strings.Cut(version, ":"); ok {
		version = v // no epoch in file names
	}
	s := &suite{
		Generation: "1.6",
		Version:    version,
		Containerd: daemon,
		RuncShim:   "/usr/bin/containerd-shim-runc-v2",
		Disabled:   []string{"io.containerd.grpc.v1.cri"},
	}
	dir := filepath.Join(cache, "containerd-"+version)
	s.TestBinary = filepath.Join(dir, "client.test")
	s.PkgDir = filepath.Join(dir, "src", "integration", "client")
	err = cached(dir, rebuild, func(tmp string) error {
		src := filepath.Join(tmp, "src")
		if err := aptSource(ctx, tmp, "containerd", string(out), src); err != nil {
			return err
		}
		pkg := filepath.Join(src, "integration", "client")
		if err := redirectDaemonPaths(filepath.Join(pkg, "client_unix_test.go")); err != nil {
			return err
		}
		// A Windows-only requirement that the module proxy does not serve.
		if err := buildStep(ctx, pkg, "go", "mod", "edit", "-droprequire", "github.com/Microsoft/hcsshim/test"); err != nil {
			return err
		}
		return buildStep(ctx, pkg, "go", "test", "-vet=off", "-c", "-o", filepath.Join(tmp, "client.test"), ".")
	})
	return s, err
}

// prepare2 builds the suite from containerd 2.x's Go module; the daemon, ctr
// and runc shim of the same version are in binDir (make containerd2).
func prepare2(ctx context.Context, generation, cache, binDir string, rebuild bool) (*suite, error) {
	version := "v" + generation
	s := &suite{
		Generation: generation,
		Version:    version,
		Containerd: filepath.Join(binDir, "containerd"),
		RuncShim:   filepath.Join(binDir, "containerd-shim-runc-v2"),
		BinDir:     binDir,
		Disabled: []string{"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images",
			"io.containerd.cri.v1.runtime", "io.containerd.podsandbox.controller.v1.podsandbox"},
	}
	for _, b := range []string{s.Containerd, s.RuncShim, filepath.Join(binDir, "ctr")} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("containerd %s not built (make containerd2): %w", version, err)
		}
	}
	dir := filepath.Join(cache, "containerd-"+version)
	s.TestBinary = filepath.Join(dir, "client.test")
	s.RuncFP = filepath.Join(dir, "runc-fp")
	s.PkgDir = filepath.Join(dir, "src", "integration", "client")
	err := cached(dir, rebuild, func(tmp string) error {
		var mod struct{ Dir, Error string }
		var stdout bytes.Buffer
		cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", "github.com/containerd/containerd/v2@"+version)
		cmd.Dir, cmd.Stdout, cmd.Stderr = tmp, &stdout, os.Stderr
		runErr := cmd.Run()
		if err := json.Unmarshal(stdout.Bytes(), &mod); err != nil || mod.Dir == "" {
			return fmt.Errorf("go mod download containerd %s: %v %v %s", version, runErr, err, mod.Error)
		}
		src := filepath.Join(tmp, "src")
		if err := buildStep(ctx, "", "cp", "-a", mod.Dir, src); err != nil {
			return err
		}
		if err := buildStep(ctx, "", "chmod", "-R", "u+w", src); err != nil {
			return err
		}
		if err := redirectDaemonPaths(filepath.Join(src, "integration", "client", "client_unix.go")); err != nil {
			return err
		}
		// The suite's -image-list flag is read by package-level initialisers,
		// before flag.Parse: let it default from the environment instead.
		if err := edit(filepath.Join(src, "integration", "images", "image_list.go"),
			`flag.String("image-list", ""`, `flag.String("image-list", os.Getenv("CONFORMANCE_IMAGE_LIST")`); err != nil {
			return err
		}
		if err := buildStep(ctx, src, "go", "test", "-vet=off", "-c", "-o", filepath.Join(tmp, "client.test"), "./integration/client"); err != nil {
			return err
		}
		return buildStep(ctx, src, "go", "build", "-o", filepath.Join(tmp, "runc-fp"), "./integration/failpoint/cmd/runc-fp")
	})
	return s, err
}

// cached runs build in a fresh dir+".tmp" and moves it to dir, unless dir
// already holds a complete build of this recipe. A lock keeps concurrent
// runs from building the same thing twice.
func cached(dir string, rebuild bool, build func(tmp string) error) error {
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
	slog.Info("building containerd's client test binary (once; cached)", "dir", dir)
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
