package integration

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/tether-shim/tether/integration/harness"
)

// peerAs runs the peer program as uid/gid against socket.
func peerAs(t *testing.T, bin, socket string, uid uint32) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestSocketOnlyForRoot: the shim's socket is a filesystem socket, mode
// 0600 in a root-only directory; an unprivileged user can neither reach it
// nor, when let through the file modes, get past the peer-credential check;
// a container in the host's network namespace cannot reach it either.
func TestSocketOnlyForRoot(t *testing.T) {
	e := setup(t)
	id := e.id("sock")
	e.runDetached(id, "sleep", "100000")
	address, err := e.ctd.ShimAddress(id)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(address, "unix:///") {
		t.Fatalf("address %q is not a filesystem unix socket", address)
	}
	path := strings.TrimPrefix(address, "unix://")
	dir := filepath.Dir(path)
	for p, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, path: 0o600 | os.ModeSocket} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want || st.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("%s: mode %v uid %d, want %v owned by root", p, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, want)
		}
	}
	// No abstract socket: its name would be reachable from any process in
	// the host network namespace, file modes or not.
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	var listed bool
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		name := fields[len(fields)-1]
		if strings.HasPrefix(name, "@") && strings.Contains(name, "tether") {
			t.Errorf("abstract socket %s", name)
		}
		if name == path {
			listed = true
		}
	}
	f.Close()
	if !listed {
		t.Errorf("%s not in /proc/net/unix", path)
	}

	peerDir, err := os.MkdirTemp("", "tether-peer-") // reachable by nobody, unlike t.TempDir
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(peerDir)
	os.Chmod(peerDir, 0o755)
	bin := filepath.Join(peerDir, "peer")
	root, _ := filepath.Abs("..")
	if err := harness.BuildProgram(root, "peer", bin); err != nil {
		t.Fatal(err)
	}
	if out, err := peerAs(t, bin, path, 0); err != nil {
		t.Fatalf("root could not connect: %s", out)
	}
	out, err := peerAs(t, bin, path, 65534)
	if err == nil || !strings.Contains(out, "permission denied") {
		t.Errorf("nobody through the file modes: %q (%v), want permission denied", out, err)
	}
	// Open the file modes for a moment (the socket and every directory on
	// its way): the peer credentials still say no.
	restore := map[string]os.FileMode{}
	for d := dir; d != "/"; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err == nil && st.Mode().Perm()&0o001 == 0 {
			restore[d] = st.Mode().Perm()
			os.Chmod(d, st.Mode().Perm()|0o011)
		}
	}
	os.Chmod(path, 0o666)
	out, err = peerAs(t, bin, path, 65534)
	os.Chmod(path, 0o600)
	for d, mode := range restore {
		os.Chmod(d, mode)
	}
	if err == nil || strings.Contains(out, "connected") || strings.Contains(out, "permission denied") {
		t.Errorf("nobody past open file modes: %q (%v), want refused by the credential check", out, err)
	}
	t.Logf("unprivileged peer with open file modes: %s", out)

	// A container sharing the host's network namespace sees the socket in
	// /proc/net/unix but has no path to it.
	res := e.ctr("run", "--rm", "--net-host", "--runtime", harness.Runtime, harness.BusyboxImageName, e.id("hostnet"),
		"sh", "-c", "grep -c "+filepath.Base(path)+" /proc/net/unix; test -e "+path+" && echo reachable || echo unreachable")
	if lines := strings.Fields(res.Stdout); len(lines) != 2 || lines[0] == "0" || lines[1] != "unreachable" {
		t.Errorf("host-network container: %q, want the socket listed but unreachable", res.Stdout)
	}
}
