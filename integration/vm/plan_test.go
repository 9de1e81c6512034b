package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestEveryIntegrationTestIsPlaced: each test of the integration suite is
// in exactly one of vmTests and hostOnlyTests, and each listed test exists.
func TestEveryIntegrationTestIsPlaced(t *testing.T) {
	files, err := filepath.Glob("../*_test.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("integration test files: %v %v", files, err)
	}
	found := map[string]bool{}
	fset := token.NewFileSet()
	for _, f := range files {
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range file.Decls {
			if fn, ok := d.(*ast.FuncDecl); ok && fn.Recv == nil && strings.HasPrefix(fn.Name.Name, "Test") && fn.Name.Name != "TestMain" {
				found[fn.Name.Name] = true
			}
		}
	}
	vm, host := vmTests(), hostOnlyTests()
	for name := range found {
		_, inVM := vm[name]
		_, onHost := host[name]
		if inVM == onHost {
			t.Errorf("%s: in the VM list %v, in the host-only list %v: put it in exactly one (integration/vm/plan.go)", name, inVM, onHost)
		}
	}
	for _, list := range []map[string]string{vm, host} {
		for name, why := range list {
			if !found[name] {
				t.Errorf("%s is listed but is no integration test", name)
			}
			if why == "" {
				t.Errorf("%s is listed without a reason", name)
			}
		}
	}
}

// TestStressRunsTheSuitesAtFullSize: -stress exports TETHER_STRESS=1 in the
// guest before any suite runs, and only then.
func TestStressRunsTheSuitesAtFullSize(t *testing.T) {
	o := options{containerd: "1.6", drivers: "systemd", run: "TestOOMKillsInARow"}
	if lines := checkLines(o); len(lines) != 1 || strings.Contains(lines[0], "TETHER_STRESS") {
		t.Fatalf("without -stress: %q", lines)
	}
	o.stress = true
	lines := checkLines(o)
	if len(lines) != 2 || lines[0] != "export TETHER_STRESS=1" || !strings.HasPrefix(lines[1], "run_suite integration 1.6 systemd") {
		t.Fatalf("with -stress: %q", lines)
	}
}
