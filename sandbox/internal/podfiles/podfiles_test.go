package podfiles

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cri "github.com/tether-shim/tether/proto/cri"
)

// containerdLayout makes a shim sandbox's bundle where containerd 2.x puts
// one under root and state, and returns it.
func containerdLayout(t *testing.T, root, state, id string) string {
	t.Helper()
	work := filepath.Join(root, shimControllerDir, "k8s.io", id)
	bundle := filepath.Join(state, shimControllerDir, "k8s.io", id)
	for _, d := range []string{work, bundle} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(work, filepath.Join(bundle, "work")); err != nil {
		t.Fatal(err)
	}
	return bundle
}

// TestCRIFilesFromTheBundlesPlace: the CRI's directories of a pod are found
// from where containerd put the sandbox's bundle, and from nowhere else.
func TestCRIFilesFromTheBundlesPlace(t *testing.T) {
	root, state := t.TempDir(), t.TempDir()
	f, err := Find(containerdLayout(t, root, state, "pod1"), "pod1")
	if err != nil {
		t.Fatal(err)
	}
	if f.RootDir != filepath.Join(root, criPluginDir, "sandboxes", "pod1") || f.StateDir != filepath.Join(state, criPluginDir, "sandboxes", "pod1") {
		t.Fatalf("pod files at %+v", f)
	}
	if err := f.Check(); err != nil {
		t.Fatal(err)
	}
	for name, bundle := range map[string]string{
		"another id":       containerdLayout(t, t.TempDir(), t.TempDir(), "pod2"),
		"not containerd's": t.TempDir(),
		"a task's bundle":  filepath.Join(t.TempDir(), "io.containerd.runtime.v2.task", "k8s.io", "pod1"),
		"work link to nowhere": func() string {
			b := containerdLayout(t, t.TempDir(), t.TempDir(), "pod1")
			os.Remove(filepath.Join(b, "work"))
			return b
		}(),
		"work link off its tree": func() string {
			b := containerdLayout(t, t.TempDir(), t.TempDir(), "pod1")
			os.Remove(filepath.Join(b, "work"))
			os.Symlink("/tmp", filepath.Join(b, "work"))
			return b
		}(),
	} {
		if f, err := Find(bundle, "pod1"); err == nil {
			t.Errorf("%s: pod files at %+v", name, f)
		}
	}
	for _, bad := range []Files{
		{RootDir: "/", StateDir: f.StateDir},
		{RootDir: f.RootDir, StateDir: "/var/lib/something/sandboxes/pod1"},
		{RootDir: f.RootDir + "/../../x", StateDir: f.StateDir},
		{RootDir: "relative/" + criPluginDir + "/sandboxes/pod1", StateDir: f.StateDir},
	} {
		if err := bad.Check(); err == nil {
			t.Errorf("%+v passed the check", bad)
		}
		if err := bad.Remove(); err == nil {
			t.Errorf("%+v was removed", bad)
		}
	}
}

// TestPodFilesWrittenAndRemoved: hostname, hosts and resolv.conf as the
// pod configures them (the node's where it does not), the pod's /dev/shm
// a tmpfs of its own; all gone, unmounted, after remove.
func TestPodFilesWrittenAndRemoved(t *testing.T) {
	f, err := Find(containerdLayout(t, t.TempDir(), t.TempDir(), "pod1"), "pod1")
	if err != nil {
		t.Fatal(err)
	}
	p := Config{Hostname: "pod-host", Shm: os.Geteuid() == 0,
		DNS: &cri.DNSConfig{Servers: []string{"192.0.2.53", "192.0.2.54"}, Searches: []string{"a.test", "b.test"}, Options: []string{"ndots:2"}}}
	if err := f.SetUp(p); err != nil {
		t.Fatal(err)
	}
	hosts, _ := os.ReadFile("/etc/hosts")
	for name, want := range map[string]string{
		"hostname":    "pod-host\n",
		"resolv.conf": "search a.test b.test\nnameserver 192.0.2.53\nnameserver 192.0.2.54\noptions ndots:2\n",
		"hosts":       string(hosts),
	} {
		if got, _ := os.ReadFile(filepath.Join(f.RootDir, name)); string(got) != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if p.Shm && len(mountsAt(f.shm())) != 1 {
		t.Errorf("pod /dev/shm mounts: %v", mountsAt(f.shm()))
	}
	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	if len(mountsAt(f.shm())) != 0 {
		t.Errorf("pod /dev/shm still mounted")
	}
	for _, d := range []string{f.RootDir, f.StateDir} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", d, err)
		}
	}
	// Without DNS settings or a hostname: the node's.
	q := Config{}
	if err := f.SetUp(q); err != nil {
		t.Fatal(err)
	}
	node, _ := os.Hostname()
	resolv, _ := os.ReadFile("/etc/resolv.conf")
	if got, _ := os.ReadFile(filepath.Join(f.RootDir, "hostname")); string(got) != node+"\n" {
		t.Errorf("hostname %q, the node's is %q", got, node)
	}
	if got, _ := os.ReadFile(filepath.Join(f.RootDir, "resolv.conf")); string(got) != string(resolv) {
		t.Errorf("resolv.conf %q, the node's is %q", got, resolv)
	}
	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	var none *Files
	if none.SetUp(p) != nil || none.UnmountShm() != nil || none.Remove() != nil {
		t.Fatal("no pod files did something")
	}
}

// mountsAt lists the mounts of this mount namespace at path.
func mountsAt(path string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == path {
			out = append(out, sc.Text())
		}
	}
	return out
}
