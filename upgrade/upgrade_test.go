package upgrade

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	upgradepb "github.com/tether-shim/tether/proto/upgrade"
)

// TestStateRoundTrip: what one binary writes down the next reads back,
// from a descriptor that survives exec; another version is refused.
func TestStateRoundTrip(t *testing.T) {
	st := &upgradepb.ShimState{Version: StateVersion, Shim: &upgradepb.Shim{Namespace: "ns", Binary: "/bin/x"},
		Events: [][]byte{[]byte("e1"), []byte("e2")}}
	fd, err := WriteState(st)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC != 0 {
		t.Fatal("the state descriptor would not survive exec")
	}
	got, err := ReadState(fd)
	if err != nil {
		t.Fatal(err)
	}
	if got.GetShim().GetNamespace() != "ns" || len(got.GetEvents()) != 2 {
		t.Fatalf("read back %v", got)
	}
	// Read twice (a rollback hands the same descriptor on).
	if _, err := ReadState(fd); err != nil {
		t.Fatalf("second read: %v", err)
	}
	for _, v := range []uint32{0, StateVersion + 1} {
		other, _ := WriteState(&upgradepb.ShimState{Version: v})
		defer unix.Close(other)
		if _, err := ReadState(other); err == nil || !strings.Contains(err.Error(), "version") {
			t.Fatalf("a state of version %d: %v", v, err)
		}
	}
}

// TestStateVersions: a state is written with the oldest version that holds
// it (a shim without a pod can still move to a binary that reads only
// version 1; one with a pod that has a holder, or none yet, to one that
// reads version 2; one with a pod held without any process, only to one
// that reads version 3; one with an exec's start in flight, only to one
// that reads version 4; one with a terminal, only to one that reads
// version 5), and every version up to StateVersion is read.
func TestStateVersions(t *testing.T) {
	for _, c := range []struct {
		pod       *upgradepb.Sandbox
		starts    bool
		terminals bool
		want      uint32
	}{
		{nil, false, false, 1},
		{&upgradepb.Sandbox{Holder: &upgradepb.Holder{Pid: 10}}, false, false, 2},
		{&upgradepb.Sandbox{}, false, false, 2},
		{&upgradepb.Sandbox{NamespacesBound: true}, false, false, 3},
		{nil, true, false, 4},
		{&upgradepb.Sandbox{NamespacesBound: true}, true, false, 4},
		{nil, false, true, 5},
		{&upgradepb.Sandbox{NamespacesBound: true}, true, true, 5},
	} {
		if v := VersionFor(c.pod, c.starts, c.terminals); v != c.want || v > StateVersion {
			t.Errorf("a state with pod %v, starts in flight %v, terminals %v is version %d, want %d (newest %d)", c.pod, c.starts, c.terminals, v, c.want, StateVersion)
		}
	}
	for v := uint32(1); v <= StateVersion; v++ {
		if err := CheckVersion(v); err != nil {
			t.Errorf("version %d: %v", v, err)
		}
	}
}

func TestCheckFds(t *testing.T) {
	r, w, _ := os.Pipe()
	defer w.Close()
	open := int(r.Fd())
	if err := CheckFds([]int{open}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := CheckFds([]int{open}); err == nil {
		t.Fatal("a closed descriptor passed")
	}
}

// TestProbe: a binary answers the probe for its state version, one that
// exits at once or answers nonsense is refused.
func TestProbe(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755)
		return p
	}
	probe := func(path string, v uint32) (string, error) {
		b, err := OpenBinary(path)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		return b.Probe(v, execMonitor{})
	}
	ok := script("ok", `[ "$1" = -upgrade-probe ] && [ "$2" = 2 ] && echo "tether-upgrade-probe ok v9"`)
	if v, err := probe(ok, 2); err != nil || v != "v9" {
		t.Fatalf("probe of a good binary: %q %v", v, err)
	}
	if _, err := probe(ok, 1); err == nil {
		t.Error("probe for a version the binary refuses passed")
	}
	for name, body := range map[string]string{"exits": "exit 1", "mute": "true", "odd": "echo hello"} {
		if _, err := probe(script(name, body), 1); err == nil {
			t.Errorf("probe of a binary that %s passed", name)
		}
	}
	if _, err := OpenBinary(dir); err == nil {
		t.Error("a directory opened as a binary")
	}
}

// execMonitor runs commands with os/exec (the shim uses its reaper).
type execMonitor struct{}

func (execMonitor) Start(c *exec.Cmd) (chan runc.Exit, error) {
	if err := c.Start(); err != nil {
		return nil, err
	}
	ec := make(chan runc.Exit, 1)
	go func() {
		c.Wait()
		ec <- runc.Exit{Status: c.ProcessState.ExitCode()}
		close(ec)
	}()
	return ec, nil
}

func (m execMonitor) StartLocked(c *exec.Cmd) (chan runc.Exit, error) { return m.Start(c) }

func (execMonitor) Wait(_ *exec.Cmd, ec chan runc.Exit) (int, error) {
	e, ok := <-ec
	if !ok {
		return -1, errors.New("no exit")
	}
	return e.Status, nil
}

// TestBinaryIsRunning: a start over runs only the file this process runs
// from, not another one at its path.
func TestBinaryIsRunning(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{self: true, "/bin/sh": false} {
		b, err := OpenBinary(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := b.isRunning(); got != want {
			t.Errorf("%s: running %v, want %v", path, got, want)
		}
		b.Close()
	}
}
