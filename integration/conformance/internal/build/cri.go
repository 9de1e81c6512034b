package build

import (
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// criRecipe and critestRecipe name how those suites are built (no source
// edits); changing a build changes its recipe, which rebuilds it.
const (
	criRecipe     = "r2"
	critestRecipe = "r1"
)

// CRI builds (or finds in cache) containerd 2.x's CRI integration suite,
// as containerd's Makefile does (`go test -c ./integration`, named
// cri-integration.test), with the failpoint shim and CNI plugin its
// failpoint tests use, and the loopback checker one test mounts from
// /usr/local/bin. Its tests are listed from its source.
func CRI(ctx context.Context, generation, cache, binDir string, rebuild bool) (*Suite, error) {
	s, err := cri2(KindCRI, generation, binDir)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cache, "containerd-"+s.Version+"-cri")
	s.TestBinary = filepath.Join(dir, "cri-integration.test")
	s.FailpointShim = filepath.Join(dir, "containerd-shim-runc-fp-v1")
	s.FailpointCNI = filepath.Join(dir, "cni-bridge-fp")
	s.Loopback = filepath.Join(dir, "loopback-v2")
	s.PkgDir = filepath.Join(dir, "src", "integration")
	s.Label = "cri " + s.Version
	err = cached(dir, criRecipe, rebuild, func(tmp string) error {
		src := filepath.Join(tmp, "src")
		if err := moduleSource(ctx, tmp, "github.com/containerd/containerd/v2@"+s.Version, src); err != nil {
			return err
		}
		steps := [][]string{
			{"go", "test", "-vet=off", "-c", "-o", filepath.Join(tmp, "cri-integration.test"), "./integration"},
			{"go", "build", "-o", filepath.Join(tmp, "containerd-shim-runc-fp-v1"), "./integration/failpoint/cmd/containerd-shim-runc-fp-v1"},
			{"go", "build", "-o", filepath.Join(tmp, "cni-bridge-fp"), "./integration/failpoint/cmd/cni-bridge-fp"},
			// Run inside a busybox container: static.
			{"env", "CGO_ENABLED=0", "go", "build", "-o", filepath.Join(tmp, "loopback-v2"), "./integration/failpoint/cmd/loopback-v2"},
		}
		for _, st := range steps {
			if err := buildStep(ctx, src, st[0], st[1:]...); err != nil {
				return err
			}
		}
		tests, err := listTests(ctx, filepath.Join(src, "integration"))
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(tmp, "tests.txt"), []byte(strings.Join(tests, "\n")+"\n"), 0o644)
	})
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(dir, "tests.txt"))
	if err != nil {
		return nil, err
	}
	s.Tests = strings.Fields(string(data))
	return s, nil
}

// Critest builds (or finds in cache) cri-tools' critest at the given
// version, as cri-tools' Makefile does (`go test -c ./cmd/critest`), to run
// against containerd 2.x's CRI.
func Critest(ctx context.Context, criTools, generation, cache, binDir string, rebuild bool) (*Suite, error) {
	s, err := cri2(KindCritest, generation, binDir)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cache, "cri-tools-"+criTools)
	s.TestBinary = filepath.Join(dir, "critest")
	s.PkgDir = dir
	s.Label = "critest " + criTools
	err = cached(dir, critestRecipe, rebuild, func(tmp string) error {
		src := filepath.Join(tmp, "src")
		if err := moduleSource(ctx, tmp, "sigs.k8s.io/cri-tools@"+criTools, src); err != nil {
			return err
		}
		return buildStep(ctx, src, "go", "test", "-vet=off", "-c", "-o", filepath.Join(tmp, "critest"), "./cmd/critest")
	})
	return s, err
}

// cri2 is a suite that runs against containerd 2.x's CRI (binDir: make
// containerd2).
func cri2(kind Kind, generation, binDir string) (*Suite, error) {
	if strings.HasPrefix(generation, "1.") {
		return nil, fmt.Errorf("the %s suite runs against containerd 2.x, not %s", kind, generation)
	}
	s := &Suite{
		Kind:       kind,
		Generation: generation,
		Version:    "v" + generation,
		Containerd: filepath.Join(binDir, "containerd"),
		RuncShim:   filepath.Join(binDir, "containerd-shim-runc-v2"),
		BinDir:     binDir,
	}
	return s, checkContainerd2(s)
}

// listTests names the top-level tests of the package in dir that build on
// this machine, from their source.
func listTests(ctx context.Context, dir string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-f", `{{join .TestGoFiles "\n"}}`, ".")
	cmd.Dir, cmd.Env = dir, append(os.Environ(), "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list the test files of %s: %w", dir, err)
	}
	var tests []string
	fset := token.NewFileSet()
	for _, name := range strings.Fields(string(out)) {
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if ok && fn.Recv == nil && strings.HasPrefix(fn.Name.Name, "Test") && fn.Name.Name != "TestMain" &&
				fn.Type.Params.NumFields() == 1 {
				tests = append(tests, fn.Name.Name)
			}
		}
	}
	if len(tests) == 0 {
		return nil, fmt.Errorf("no test in %s", dir)
	}
	return tests, nil
}
