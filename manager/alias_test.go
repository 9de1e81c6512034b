package manager

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// TestSocketAliasIsContainerds: the link is where containerd's shims put a
// group's socket (pkg/shim.SocketAddress: /run/containerd/s/ and the
// SHA-256 of "ADDRESS/NAMESPACE/GROUP"), which containerd's CRI suite
// (TestContainerTTYLeakAfterExit, the issue 7496 tests) and ctr shim dial.
// The value is what containerd 2.4.2's SocketAddress computes for a pod
// "pod" in k8s.io.
func TestSocketAliasIsContainerds(t *testing.T) {
	const want = "/run/containerd/s/b9cab8e84f817f3c3bb561c7ea8dcbfba051d5d8f56ec2c3f204bc387d13f7d0"
	if got := socketAlias("/run/containerd/containerd.sock", "k8s.io", "pod"); got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// TestSocketAliasLinks: a client dials the shim through the link; a stale
// link is replaced; a live socket at the link's path is left alone; the
// link goes only while it points at the shim's socket.
func TestSocketAliasLinks(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "tether", "shim.sock")
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	alias := filepath.Join(dir, "s", "abc")
	if err := os.MkdirAll(filepath.Dir(alias), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "gone.sock"), alias); err != nil { // stale
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	linkSocketAlias(alias, socket, log)
	c, err := net.Dial("unix", alias)
	if err != nil {
		t.Fatalf("dial through the link: %v", err)
	}
	c.Close()
	unlinkSocketAlias(alias, filepath.Join(dir, "other.sock"))
	if _, err := os.Lstat(alias); err != nil {
		t.Fatalf("a link to this shim's socket went for another's: %v", err)
	}
	unlinkSocketAlias(alias, socket)
	if _, err := os.Lstat(alias); !os.IsNotExist(err) {
		t.Fatalf("link left behind: %v", err)
	}
	// A live socket at the path is someone else's: left alone.
	other, err := net.Listen("unix", alias)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	go func() {
		for {
			c, err := other.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	linkSocketAlias(alias, socket, log)
	if st, err := os.Lstat(alias); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("a live socket was replaced: %v %v", st, err)
	}
}
