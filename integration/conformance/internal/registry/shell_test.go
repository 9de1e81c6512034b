package registry

import (
	"archive/tar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The layer of a dynamically linked program runs on its own: its loader
// and every library it needs are in it (here the host's /usr/bin/true,
// run as bin/sh in a root holding nothing else).
func TestShellLayerRunsAlone(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chroot")
	}
	es, err := shellLayer("/usr/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	var names []string
	for _, e := range es {
		names = append(names, e.Name)
		path := filepath.Join(root, e.Name)
		if e.Typeflag == tar.TypeDir {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatalf("%s: %v (parents come first)", e.Name, err)
			}
			continue
		}
		if err := os.WriteFile(path, e.data, os.FileMode(e.Mode)); err != nil {
			t.Fatalf("%s: %v (parents come first)", e.Name, err)
		}
	}
	cmd := exec.Command("/bin/sh")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bin/sh in a root of %v: %v: %s", names, err, out)
	}
	again, err := shellLayer("/usr/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	for i := range es {
		if es[i].Name != again[i].Name {
			t.Fatalf("entry %d is %s, then %s: the layer must be the same each run", i, es[i].Name, again[i].Name)
		}
	}
}

// A statically linked busybox is refused with a reason: its sh would run
// its applets itself.
func TestShellLayerRefusesStatic(t *testing.T) {
	_, err := shellLayer("/bin/busybox")
	if err == nil || !strings.Contains(err.Error(), "statically linked") {
		t.Fatalf("got %v, want a statically linked error", err)
	}
}
