package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

// TestNoInfoQueryOnCreate: containerd 2.4 asks a shim that is not runc
// (through `-info`) for the deprecated containerd.io/runtime-allow-mounts
// annotation on task create, unless the shim's bootstrap result carries a
// MountCapabilities extension; a failed query is logged ("failed to query
// deprecated runtime-allow-mounts annotation") and repeated on every create.
// tether's bootstrap result carries the extension, so with an -info that
// always fails, three creates run -info never and containerd logs no such
// error. (containerd 1.6 never runs -info; the test holds there too.)
func TestNoInfoQueryOnCreate(t *testing.T) {
	e := setup(t)
	dir, err := os.MkdirTemp("", "tether-boot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// A shim that records every call and fails -info, in front of tether.
	shimDir, calls := filepath.Join(dir, "bin"), filepath.Join(dir, "shim-calls.log")
	if err := os.MkdirAll(shimDir, 0o755); err != nil {
		t.Fatal(err)
	}
	wrapper := "#!/bin/sh\necho \"$*\" >> " + calls + "\n" +
		"if [ \"$1\" = -info ]; then echo 'tether -info disabled by the test' >&2; exit 1; fi\n" +
		"exec " + filepath.Join(suite.shimDir, "containerd-shim-tether-v2") + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(shimDir, "containerd-shim-tether-v2"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	ctd, err := harness.Start(harness.Options{ShimDir: shimDir, Dir: dir,
		ContainerdBinary: suite.ctd.ContainerdBinary, CtrBinary: suite.ctd.CtrBinary})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log:\n%s", ctd.Log())
		}
		ctd.Stop()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := ctd.ImportBusybox(ctx, suite.busybox); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		res, err := ctd.Ctr(ctx, nil, "run", "--rm", "--runtime", harness.Runtime, harness.BusyboxImageName, e.id("boot"), "echo", "hi")
		if err != nil || res.Stdout != "hi\n" {
			t.Fatalf("run %d: %q %v", i, res.Stdout, err)
		}
	}
	data, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "-info"); n != 0 || !strings.Contains(string(data), "start") {
		t.Errorf("containerd ran tether -info %d times over three creates (calls:\n%s)", n, data)
	}
	if log := ctd.FullLog(); strings.Contains(log, "runtime-allow-mounts") {
		t.Errorf("containerd queried the deprecated annotation:\n%s", grepLines(log, "runtime-allow-mounts"))
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
