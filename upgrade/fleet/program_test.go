package fleet

import (
	"bytes"
	"os"
	"os/exec"
	"runtime/debug"
	"testing"
)

// TestProgramOf: the main package of a Go program is read from its
// executable; anything else (another kind of file, one cut short) is an
// error, not a panic.
func TestProgramOf(t *testing.T) {
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("no build information")
	}
	if got, err := programOf(bytes.NewReader(self)); err != nil || got != bi.Path {
		t.Fatalf("this test's program: %q %v, want %q", got, err, bi.Path)
	}
	for name, data := range map[string][]byte{
		"empty":         nil,
		"a script":      []byte("#!/bin/sh\nexit 0\n"),
		"cut short":     self[:4096],
		"headers only":  self[:64],
		"a wrong magic": append([]byte("\x7fELG"), self[4:]...),
	} {
		if got, err := programOf(bytes.NewReader(data)); err == nil {
			t.Errorf("%s: read as %q", name, got)
		}
	}
	// A program that is not Go (the shell, as found).
	if sh, err := exec.LookPath("sh"); err == nil {
		f, err := os.Open(sh)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if got, err := programOf(f); err == nil {
			t.Errorf("%s read as the Go program %q", sh, got)
		}
	}
}
