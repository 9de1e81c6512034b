package manager

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/proto/bootstrap"
	"github.com/tether-shim/tether/proto/types"
)

// writeSpec writes a config.json with annotations and returns its path.
func writeSpec(t *testing.T, annotations map[string]string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.json")
	data, _ := json.Marshal(map[string]any{"annotations": annotations})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestGroupOf(t *testing.T) {
	for _, c := range []struct {
		annotations map[string]string
		want        string
	}{
		{nil, "c1"},
		{map[string]string{"io.kubernetes.cri.sandbox-id": "pod-1234"}, "pod-1234"},
		{map[string]string{"io.containerd.tether.v2.group": "g1", "io.kubernetes.cri.sandbox-id": "pod-1234"}, "g1"},
	} {
		if got, err := groupOf(writeSpec(t, c.annotations), "c1"); err != nil || got != c.want {
			t.Errorf("%v: group %q %v, want %q", c.annotations, got, err, c.want)
		}
	}
}

// TestGroupOfASandboxBundle: containerd 2.x starts a shim sandboxer's shim
// in a bundle with no spec: the pod is its own group, the one its
// containers' sandbox-id annotation names. A spec that cannot be read for
// another reason is still an error.
func TestGroupOfASandboxBundle(t *testing.T) {
	dir := t.TempDir()
	if got, err := groupOf(filepath.Join(dir, "config.json"), "pod-1234"); err != nil || got != "pod-1234" {
		t.Fatalf("group %q %v, want the sandbox's own id", got, err)
	}
	if err := os.Mkdir(filepath.Join(dir, "config.json"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := groupOf(filepath.Join(dir, "config.json"), "pod-1234"); err == nil {
		t.Fatal("an unreadable spec gave a group")
	}
}

// TestHostileGroupsAreRefused: a group value that is not an id (it could
// name another namespace's or containerd's socket) is refused, through
// either annotation, with a clear error.
func TestHostileGroupsAreRefused(t *testing.T) {
	hostile := []string{"../tenant-b/pod-1234", "../../other.sock/x", "/abs/path", "..", ".", "a\x00b", strings.Repeat("p", 200), "", "a/b"}
	for _, label := range groupLabels {
		for _, g := range hostile {
			_, err := groupOf(writeSpec(t, map[string]string{label: g}), "c1")
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), label) {
				t.Errorf("%s=%q: %v", label, g, err)
			}
		}
	}
}

// TestSocketAddressSeparatesNamespacesAndContainerds: the same group in
// two namespaces, or under two containerds, never shares a socket, and no
// shift of bytes between fields makes two triples collide.
func TestSocketAddressSeparatesNamespacesAndContainerds(t *testing.T) {
	base := socketAddress("/run/tether", "/run/containerd/containerd.sock", "tenant-a", "pod")
	for name, other := range map[string]string{
		"namespace":  socketAddress("/run/tether", "/run/containerd/containerd.sock", "tenant-b", "pod"),
		"containerd": socketAddress("/run/tether", "/run/other/containerd.sock", "tenant-a", "pod"),
		"shifted":    socketAddress("/run/tether", "/run/containerd/containerd.sock", "tenant-ap", "od"),
		"joined":     socketAddress("/run/tether", "/run/containerd/containerd.sock/tenant-a", "", "pod"),
	} {
		if other == base {
			t.Errorf("%s: same socket %s", name, base)
		}
	}
	if again := socketAddress("/run/tether", "/run/containerd/containerd.sock", "tenant-a", "pod"); again != base {
		t.Errorf("not stable: %s != %s", again, base)
	}
	if !strings.HasPrefix(base, "unix:///run/tether/") || strings.Count(strings.TrimPrefix(base, "unix:///run/tether/"), "/") != 0 {
		t.Errorf("address %s is not a file of the socket directory", base)
	}
}

// TestListenReplacesOnlyStaleSockets: a socket nobody answers on is
// replaced; one a shim answers on is left to it.
func TestListenReplacesOnlyStaleSockets(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockDir(filepath.Join(dir, "tether"))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if st, err := os.Stat(filepath.Join(dir, "tether")); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory: %v %v", st.Mode(), err)
	}
	path := filepath.Join(dir, "tether", "s")
	// A stale socket: bound, then its listener gone without unlinking.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	l, err := listen("unix://" + path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l.Close()
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v %v", st.Mode(), err)
	}
	if _, err := listen("unix://" + path); !errors.Is(err, errShimRunning) {
		t.Fatalf("a live shim's socket: %v", err)
	}
}

// TestBootstrapResultAdvertisesMountCapabilities: the answer to containerd
// 2.x carries a containerd.types.MountCapabilities extension (found the way
// containerd finds it: by the message's full name in the Any's type URL),
// claiming no mount types or transforms, as containerd's runc shim does.
func TestBootstrapResultAdvertisesMountCapabilities(t *testing.T) {
	r, err := bootstrapResult("unix:///run/tether/x")
	if err != nil {
		t.Fatal(err)
	}
	data, err := proto.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var decoded bootstrap.BootstrapResult
	if err := proto.Unmarshal(data, &decoded); err != nil {
		t.Fatal(err)
	}
	if decoded.GetVersion() != 3 || decoded.GetProtocol() != "ttrpc" || decoded.GetAddress() != "unix:///run/tether/x" {
		t.Fatalf("result %v", &decoded)
	}
	var found int
	for _, ext := range decoded.GetExtensions() {
		caps := &types.MountCapabilities{}
		if !ext.GetValue().MessageIs(caps) {
			continue
		}
		found++
		if !strings.HasSuffix(ext.GetValue().GetTypeUrl(), "/containerd.types.MountCapabilities") {
			t.Errorf("type URL %q", ext.GetValue().GetTypeUrl())
		}
		if err := ext.GetValue().UnmarshalTo(caps); err != nil {
			t.Fatal(err)
		}
		if len(caps.GetTypes()) != 0 || len(caps.GetTransforms()) != 0 {
			t.Errorf("claims %v", caps)
		}
	}
	if found != 1 {
		t.Fatalf("%d MountCapabilities extensions, want 1: %v", found, decoded.GetExtensions())
	}
}
