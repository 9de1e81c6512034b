package build

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// clientRecipe names the build edits below; changing them changes it,
// which rebuilds every cached client test binary.
const clientRecipe = "r1"

// Client finds containerd of the given generation and builds (or finds in
// cache) its client test binary.
func Client(ctx context.Context, generation, cache, ctd2Dir string, rebuild bool) (*Suite, error) {
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
func prepare16(ctx context.Context, cache string, rebuild bool) (*Suite, error) {
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
	s := &Suite{
		Kind:       KindClient,
		Generation: "1.6",
		Version:    version,
		Containerd: daemon,
		RuncShim:   "/usr/bin/containerd-shim-runc-v2",
		Disabled:   []string{"io.containerd.grpc.v1.cri"},
		Label:      "client " + version,
	}
	dir := filepath.Join(cache, "containerd-"+version)
	s.TestBinary = filepath.Join(dir, "client.test")
	s.PkgDir = filepath.Join(dir, "src", "integration", "client")
	err = cached(dir, clientRecipe, rebuild, func(tmp string) error {
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
func prepare2(ctx context.Context, generation, cache, binDir string, rebuild bool) (*Suite, error) {
	version := "v" + generation
	s := &Suite{
		Kind:       KindClient,
		Generation: generation,
		Version:    version,
		Containerd: filepath.Join(binDir, "containerd"),
		RuncShim:   filepath.Join(binDir, "containerd-shim-runc-v2"),
		BinDir:     binDir,
		Disabled: []string{"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images",
			"io.containerd.cri.v1.runtime", "io.containerd.podsandbox.controller.v1.podsandbox"},
		Label: "client " + version,
	}
	if err := checkContainerd2(s); err != nil {
		return nil, err
	}
	dir := filepath.Join(cache, "containerd-"+version)
	s.TestBinary = filepath.Join(dir, "client.test")
	s.RuncFP = filepath.Join(dir, "runc-fp")
	s.PkgDir = filepath.Join(dir, "src", "integration", "client")
	err := cached(dir, clientRecipe, rebuild, func(tmp string) error {
		src := filepath.Join(tmp, "src")
		if err := moduleSource(ctx, tmp, "github.com/containerd/containerd/v2@"+version, src); err != nil {
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
