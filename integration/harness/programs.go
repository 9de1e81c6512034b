package harness

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// PrebuiltEnv names a directory holding every Program built ahead of time:
// a VM guest has no Go toolchain, so the host builds them (BuildPrograms)
// and the tests copy them from there instead of building.
const PrebuiltEnv = "TETHER_PREBUILT"

// Program is a binary the integration tests build from this module.
type Program struct {
	Name    string // file name, and how the tests ask for it
	Package string // the package to build, from the module's root
	// Version is tether's main.version; X are more -X settings (the
	// upgrade tests' binaries that fail on purpose): NAME=VALUE for
	// package upgrade's test knobs, or a variable's full name.
	Version string
	X       []string
}

// Programs are every binary the integration tests build: tether (as the
// suite runs it), the versions the upgrade and package tests move shims
// to, and the helpers.
func Programs() []Program {
	shim := "./cmd/containerd-shim-tether-v2"
	return []Program{
		{Name: "containerd-shim-tether-v2", Package: shim},
		{Name: "tether-v-next", Package: shim, Version: "v-next"},
		{Name: "tether-v-good", Package: shim, Version: "v-good"},
		{Name: "tether-v-a", Package: shim, Version: "v-a"},
		{Name: "tether-v-b", Package: shim, Version: "v-b"},
		{Name: "tether-v-pod-next", Package: shim, Version: "v-pod-next"},
		{Name: "tether-v-crash", Package: shim, Version: "v-crash", X: []string{"testCrashOnRestore=yes"}},
		{Name: "tether-v-refuse", Package: shim, Version: "v-refuse", X: []string{"testRefuseState=yes"}},
		{Name: "tether-v-probed", Package: shim, Version: "v-probed"},
		{Name: "tether-v-unprobed", Package: shim, Version: "v-unprobed"},
		{Name: "tether-v-hooked", Package: shim, Version: "v-hooked", X: []string{"testReplaceAfterProbe=yes"}},
		{Name: "tether-v-failing", Package: shim, Version: "v-failing", X: []string{FailpointsKnob}},
		{Name: "tether-v-addr-0", Package: shim, Version: "v-addr-0"},
		{Name: "tether-v-addr-1", Package: shim, Version: "v-addr-1"},
		{Name: "tether-v-none", Package: shim, Version: "v-none"},
		{Name: "tether-v-forks", Package: shim, Version: "v-forks", X: []string{"testForkAfterTakeBack=" + ForkedChild}},
		{Name: "tether-v-startover", Package: shim, Version: "v-startover", X: []string{"github.com/tether-shim/tether/daemon.testStartOver=yes"}},
		{Name: "tether-deb-1", Package: shim, Version: "deb-1"},
		{Name: "tether-deb-2", Package: shim, Version: "deb-2"},
		{Name: "tether-deb-3", Package: shim, Version: "deb-3", X: []string{"testCrashOnRestore=yes"}},
		{Name: "pause", Package: "./integration/testdata/pause"},
		{Name: "peer", Package: "./integration/testdata/peer"},
		{Name: "logger", Package: "./integration/testdata/logger"},
	}
}

// FailpointsKnob builds a tether whose steps fail as the file "failpoints"
// beside it says (internal/failpoint): each line "step=error" or
// "step=panic".
const FailpointsKnob = "github.com/tether-shim/tether/internal/failpoint.file=failpoints"

// ForkedChild is the child tether-v-forks starts right after its take-back
// (testForkAfterTakeBack): a sleep the test finds by its argument.
const ForkedChild = "sleep,86400.25"

// ProgramNamed returns the program called name.
func ProgramNamed(name string) (Program, error) {
	for _, p := range Programs() {
		if p.Name == name {
			return p, nil
		}
	}
	return Program{}, fmt.Errorf("no program %q in harness.Programs", name)
}

// BuildProgram puts the program called name at out: copied from
// $TETHER_PREBUILT if set, else built from the module at moduleRoot.
func BuildProgram(moduleRoot, name, out string) error {
	p, err := ProgramNamed(name)
	if err != nil {
		return err
	}
	if dir := os.Getenv(PrebuiltEnv); dir != "" {
		return copyExecutable(filepath.Join(dir, name), out)
	}
	return p.Build(moduleRoot, out)
}

// Build builds the program from the module at moduleRoot into out,
// statically (CGO_ENABLED=0): it runs on any Linux of the same
// architecture, a VM guest's too.
func (p Program) Build(moduleRoot, out string) error {
	var ldflags []string
	if p.Version != "" {
		ldflags = append(ldflags, "-X main.version="+p.Version)
	}
	for _, kv := range p.X {
		if name, _, _ := strings.Cut(kv, "="); !strings.Contains(name, "/") {
			kv = "github.com/tether-shim/tether/upgrade." + kv
		}
		ldflags = append(ldflags, "-X "+kv)
	}
	cmd := exec.Command("go", "build", "-o", out, "-ldflags", strings.Join(ldflags, " "), p.Package)
	cmd.Dir = moduleRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v\n%s", p.Name, err, b)
	}
	return nil
}

// BuildPrograms builds every program into dir, for PrebuiltEnv, two at a
// time (most of each is a link: the tether versions share their compile).
func BuildPrograms(moduleRoot, dir string) error {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	errs := make(chan error, len(Programs()))
	for _, p := range Programs() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs <- p.Build(moduleRoot, filepath.Join(dir, p.Name))
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("prebuilt program: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
