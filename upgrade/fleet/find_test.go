package fleet

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	upgradepb "github.com/tether-shim/tether/proto/upgrade"
)

// hangGuard is how long a test waits for what must come at once.
const hangGuard = time.Minute

func TestMain(m *testing.M) {
	if mode := os.Getenv("FLEET_TEST_SHIM"); mode != "" {
		os.Exit(fakeShim(mode))
	}
	os.Exit(m.Run())
}

// fakeShim is a process that looks like a serving shim from outside: it
// runs this test program (the program Find looks for, in these tests) with
// a shim's command line and serves the admin API on FLEET_TEST_SOCKET.
// Modes: "serve"; "stall" accepts and never answers; "chroot" serves from
// inside FLEET_TEST_ROOT (a container's process, to the host); "forked"
// serves with a child that holds its socket (and says "child PID" first).
// It says "ready" on descriptor 3, then each upgrade it is asked for.
func fakeShim(mode string) int {
	if mode == "hold" {
		select {} // holds descriptor 3 until its parent goes
	}
	report := os.NewFile(3, "report")
	if mode == "chroot" {
		if err := unix.Chroot(os.Getenv("FLEET_TEST_ROOT")); err != nil {
			fmt.Fprintln(report, err)
			return 1
		}
		os.Chdir("/")
	}
	path := os.Getenv("FLEET_TEST_SOCKET")
	os.MkdirAll(filepath.Dir(path), 0o700)
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(report, err)
		return 1
	}
	if mode == "forked" {
		// A child with this command line and executable holding the
		// socket, as a shim's child has between fork and exec.
		lf, err := l.(*net.UnixListener).File()
		if err != nil {
			fmt.Fprintln(report, err)
			return 1
		}
		child := exec.Command(os.Args[0], os.Args[1:]...)
		child.Env = append(os.Environ(), "FLEET_TEST_SHIM=hold")
		child.ExtraFiles = []*os.File{lf}
		child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := child.Start(); err != nil {
			fmt.Fprintln(report, err)
			return 1
		}
		lf.Close()
		fmt.Fprintf(report, "child %d\n", child.Process.Pid)
	}
	fmt.Fprintln(report, "ready")
	if mode == "stall" {
		for {
			c, err := l.Accept()
			if err != nil {
				return 1
			}
			defer c.Close() // held open, never answered
		}
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		return 1
	}
	upgradepb.RegisterAdminService(srv, fakeAdmin{report: report})
	srv.Serve(context.Background(), l)
	return 0
}

// fakeAdmin answers as a shim would, from its command line.
type fakeAdmin struct{ report *os.File }

func (a fakeAdmin) Info(context.Context, *upgradepb.InfoRequest) (*upgradepb.InfoResponse, error) {
	ns, _, _ := servingArgs(os.Args)
	return &upgradepb.InfoResponse{Pid: uint32(os.Getpid()), Namespace: ns, Containers: []string{"c1"}}, nil
}

func (a fakeAdmin) Upgrade(_ context.Context, r *upgradepb.UpgradeRequest) (*upgradepb.UpgradeResponse, error) {
	fmt.Fprintf(a.report, "upgrade %s\n", r.GetBinary())
	return &upgradepb.UpgradeResponse{Pid: uint32(os.Getpid()), OldVersion: "old", NewVersion: "new", Binary: r.GetBinary()}, nil
}

// fake is a running fakeShim.
type fake struct {
	cmd   *exec.Cmd
	lines chan string // what it reports after "ready"
	child int         // its child holding its socket ("forked")
}

// fakeOpts say how a fakeShim is started.
type fakeOpts struct {
	mode, namespace, address, socket, root string
	cloneflags                             uintptr
	binary                                 string // default: this test program's path
}

// startFake starts a fakeShim and waits until it is ready; it is killed
// when the test ends.
func startFake(t *testing.T, o fakeOpts) *fake {
	t.Helper()
	if o.address == "" {
		o.address = "/run/containerd/containerd.sock"
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if o.binary == "" {
		o.binary = os.Args[0]
	}
	cmd := exec.Command(o.binary, "-namespace", o.namespace, "-address", o.address, "-publish-binary", "/usr/bin/containerd")
	cmd.Env = append(os.Environ(), "FLEET_TEST_SHIM="+o.mode, "FLEET_TEST_SOCKET="+o.socket, "FLEET_TEST_ROOT="+o.root)
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: o.cloneflags}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		r.Close()
	})
	f := &fake{cmd: cmd, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			f.lines <- sc.Text()
		}
		close(f.lines)
	}()
	for {
		select {
		case line := <-f.lines:
			if pid, ok := strings.CutPrefix(line, "child "); ok {
				f.child, _ = strconv.Atoi(pid)
				continue
			}
			if line != "ready" {
				t.Fatalf("fake shim: %s", line)
			}
			return f
		case <-time.After(hangGuard):
			t.Fatal("the fake shim never got ready")
		}
	}
}

func (f *fake) pid() int { return f.cmd.Process.Pid }

// findPid is the shim Find says pid is, if it says it is one.
func findPid(t *testing.T, pid int) (Shim, bool) {
	t.Helper()
	shims, err := Find()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(shims, func(s Shim) bool { return s.Pid == pid })
	if i < 0 {
		return Shim{}, false
	}
	return shims[i], true
}

// testNamespace is a namespace no other test run uses.
func testNamespace(t *testing.T) string {
	return fmt.Sprintf("%s-%d", strings.ToLower(t.Name()), os.Getpid())
}

// TestFindTellsAShimFromAContainersProcess: a process of this same program
// with a shim's command line and a socket in a directory named "tether" is
// a shim when it shares this process's root, and is not one from inside
// another root (a container's process: the kernel says so, whatever the
// process says).
func TestFindTellsAShimFromAContainersProcess(t *testing.T) {
	ns := testNamespace(t)
	socket := filepath.Join(t.TempDir(), "tether", "a.sock")
	shim := startFake(t, fakeOpts{mode: "serve", namespace: ns, address: "/run/x/containerd.sock", socket: socket})
	root := t.TempDir()
	inContainer := startFake(t, fakeOpts{mode: "chroot", namespace: ns, socket: "/run/tether/b.sock", root: root})

	found, ok := findPid(t, shim.pid())
	if !ok {
		t.Fatal("the shim was not found")
	}
	if found.Namespace != ns || found.Address != "/run/x/containerd.sock" || found.Socket != socket {
		t.Fatalf("found %+v", found)
	}
	if _, ok := findPid(t, inContainer.pid()); ok {
		t.Fatal("a process in another root was taken for a shim")
	}
	conn, err := found.dial(hangGuard)
	if err != nil {
		t.Fatalf("dial the shim: %v", err)
	}
	conn.Close()
}

// TestDialRefusesASocketTheShimDoesNotHold: a shim's socket file replaced
// by another socket (bound there by another process) is not dialed: only
// the socket the shim holds is.
func TestDialRefusesASocketTheShimDoesNotHold(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "tether", "a.sock")
	shim := startFake(t, fakeOpts{mode: "serve", namespace: testNamespace(t), socket: socket})
	os.Remove(socket)
	other, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	found, ok := findPid(t, shim.pid())
	if !ok {
		t.Fatal("the shim was not found")
	}
	if conn, err := found.dial(hangGuard); err == nil {
		conn.Close()
		t.Fatal("dialed a socket the shim does not hold")
	}
	// A connection would be waiting to be accepted by now.
	other.(*net.UnixListener).SetDeadline(time.Now())
	if c, err := other.Accept(); err == nil {
		c.Close()
		t.Fatal("the other socket was connected to")
	}
}

// TestFindAShimWhoseBinaryWasReplaced: a shim runs on after a package
// upgrade replaced its binary on disk (and after a live upgrade, from
// another path): it runs the same program, and is found.
func TestFindAShimWhoseBinaryWasReplaced(t *testing.T) {
	dir := t.TempDir()
	binary := filepath.Join(dir, "containerd-shim-tether-v2")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(binary, self, 0o755); err != nil {
		t.Fatal(err)
	}
	shim := startFake(t, fakeOpts{mode: "serve", namespace: testNamespace(t), socket: filepath.Join(dir, "tether", "a.sock"), binary: binary})
	// Replaced as a package manager does: a new file renamed over it.
	if err := os.WriteFile(binary+".new", self, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(binary+".new", binary); err != nil {
		t.Fatal(err)
	}
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", shim.pid())); !strings.HasSuffix(exe, " (deleted)") {
		t.Fatalf("the shim's executable is %q, not a deleted file", exe)
	}
	if _, ok := findPid(t, shim.pid()); !ok {
		t.Fatal("a shim whose binary was replaced was not found")
	}
}

// TestFindTellsAShimFromItsChild: a shim's child between fork and exec
// has the shim's executable, command line and socket; it is not another
// shim (asking both would ask the shim twice, at once).
func TestFindTellsAShimFromItsChild(t *testing.T) {
	ns := testNamespace(t)
	shim := startFake(t, fakeOpts{mode: "forked", namespace: ns, socket: filepath.Join(t.TempDir(), "tether", "a.sock")})
	if shim.child == 0 {
		t.Fatal("the fake shim has no child")
	}
	var pids []int
	for _, s := range findAll(t) {
		if s.Namespace == ns {
			pids = append(pids, s.Pid)
		}
	}
	if len(pids) != 1 || pids[0] != shim.pid() {
		t.Fatalf("found %v, want the shim (%d) alone, not its child (%d)", pids, shim.pid(), shim.child)
	}
}

// TestDialAShimInAnotherNetworkNamespace: the socket a shim holds is
// matched in its own network namespace, where its sockets live.
func TestDialAShimInAnotherNetworkNamespace(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "tether", "a.sock")
	shim := startFake(t, fakeOpts{mode: "serve", namespace: testNamespace(t), socket: socket, cloneflags: unix.CLONE_NEWNET})
	found, ok := findPid(t, shim.pid())
	if !ok {
		t.Fatal("the shim was not found")
	}
	conn, err := found.dial(hangGuard)
	if err != nil {
		t.Fatalf("dial the shim: %v", err)
	}
	conn.Close()
}

// TestOpenInRootStaysInTheRoot: a process's path is resolved inside its
// root: an absolute symlink, or "..", leads to the root's files, not to the
// host's of the same name.
func TestOpenInRootStaysInTheRoot(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	proc := startFake(t, fakeOpts{mode: "chroot", namespace: testNamespace(t), socket: "/run/tether/b.sock", root: root})
	hostFile := filepath.Join(outside, "x")
	inRootFile := filepath.Join(root, outside, "x")
	for _, p := range []string{hostFile, inRootFile} {
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	want, _ := statID(inRootFile)
	for _, path := range []string{"/escape/x", "/../../../.." + outside + "/x", "/run/../escape/x"} {
		fd, err := openInRoot(proc.pid(), path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		got, err := fstatID(fd)
		unix.Close(fd)
		if err != nil || got != want {
			t.Errorf("%s resolved to %+v, want the root's %+v (the host's is %s)", path, got, want, hostFile)
		}
	}
}

// TestServingShimCommandLines: a serving shim is told apart from its start
// and delete actions whatever its flags' values (an id may be "start").
func TestServingShimCommandLines(t *testing.T) {
	serving := func(args ...string) []string {
		return append([]string{"/usr/bin/containerd-shim-tether-v2"}, args...)
	}
	for _, id := range []string{"web", "start", "delete", "upgrade"} {
		args := serving("-namespace", "default", "-id", id, "-address", "/run/c.sock", "-publish-binary", "/usr/bin/containerd")
		if ns, address, ok := servingArgs(args); !ok || ns != "default" || address != "/run/c.sock" {
			t.Errorf("serving shim of container %q: %q %q %v", id, ns, address, ok)
		}
	}
	if _, address, ok := servingArgs(serving("-namespace", "default", "-id", "x", "-address=/a", "-publish-binary", "/b", "-debug")); !ok || address != "/a" {
		t.Error("a serving shim with -debug and -address=")
	}
	for _, action := range []string{"start", "delete"} {
		if _, _, ok := servingArgs(serving("-namespace", "default", "-id", "x", "-address", "/a", "-publish-binary", "/b", action)); ok {
			t.Errorf("the %s action taken for a serving shim", action)
		}
	}
	if _, _, ok := servingArgs(serving("-namespace", "default")); ok {
		t.Error("a command line without -address and -publish-binary")
	}
}

// TestListeningSockets reads /proc/net/unix's listening sockets only.
func TestListeningSockets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "net-unix")
	os.WriteFile(path, []byte(`Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 1001 /run/tether/aaa
0000000000000000: 00000003 00000000 00000000 0001 03 1002 /run/tether/aaa
0000000000000000: 00000002 00000000 00010000 0001 01 1003 @abstract
`), 0o600)
	got, err := listeningSockets(path)
	if err != nil || len(got) != 1 || got[1001] != "/run/tether/aaa" {
		t.Fatalf("got %v %v", got, err)
	}
}
