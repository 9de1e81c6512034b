package mount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/proto/types"
	"github.com/tether-shim/tether/reaper"
)

func TestParseIDMappings(t *testing.T) {
	pm, err := parse(&types.Mount{Type: "overlay", Source: "overlay", Options: []string{
		"index=off", "lowerdir=/l/1/fs:/l/2/fs", "upperdir=/l/3/fs", "workdir=/l/3/work",
		"uidmap=0:100000:65536", "gidmap=0:200000:10,10:300000:65526"}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(pm.data, "map=") {
		t.Errorf("mappings left in the kernel's data: %q", pm.data)
	}
	want := idMappings{
		uid: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		gid: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 200000, Size: 10}, {ContainerID: 10, HostID: 300000, Size: 65526}},
	}
	if pm.ids == nil || fmt.Sprint(*pm.ids) != fmt.Sprint(want) {
		t.Errorf("mappings %v, want %v", pm.ids, want)
	}
	for _, opts := range [][]string{
		{"uidmap=0:100000:65536"}, // no gidmap
		{"gidmap=0:100000:65536"},
		{"uidmap=0:100000", "gidmap=0:100000:1"},
		{"uidmap=0:-1:1", "gidmap=0:100000:1"},
		{"uidmap=0:1:0", "gidmap=0:100000:1"},
		{"uidmap=a:b:c", "gidmap=0:100000:1"},
		{"uidmap=", "gidmap=0:100000:1"},
		{"uidmap=0:1:1,", "gidmap=0:100000:1"},
		{"uidmap=0:1:99999999999", "gidmap=0:100000:1"},
	} {
		if _, err := parse(&types.Mount{Type: "bind", Source: "/s", Options: append(opts, "rbind")}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%v accepted (%v)", opts, err)
		}
	}
}

func TestCommonDir(t *testing.T) {
	for _, c := range []struct {
		paths []string
		want  string
	}{
		{[]string{"/s/snapshots/1/fs"}, "/s/snapshots/1"},
		{[]string{"/s/snapshots/12/fs", "/s/snapshots/1/fs", "/s/snapshots/123/fs"}, "/s/snapshots"},
		{[]string{"/s/a/fs", "/t/b/fs"}, ""},
		{[]string{"/fs"}, ""},
		{[]string{"rel/1/fs", "rel/2/fs"}, ""},
		{[]string{"/s/1/fs", "rel/2/fs"}, ""},
	} {
		if got := commonDir(c.paths); got != c.want {
			t.Errorf("%v: %q, want %q", c.paths, got, c.want)
		}
	}
}

// needRoot skips a test that mounts, loudly, without root.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: mounting needs root")
	}
}

// startReaper reaps the test's children as the shim's reaper does.
func startReaper(t *testing.T) *reaper.Reaper {
	r := reaper.New()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// layer makes dir with a file owned by 0:0 and one owned by 1000:1000.
func layer(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name string
		id   int
	}{{name + "-root", 0}, {name + "-user", 1000}} {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, []byte(f.name), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, f.id, f.id); err != nil {
			t.Fatal(err)
		}
	}
}

// owner is the uid:gid a path is seen with.
func owner(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Uid, st.Gid)
}

// helpersLeft lists the user namespace helpers still running.
func helpersLeft() []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if data, err := os.ReadFile(p); err == nil && strings.HasPrefix(string(data), "tether-userns-helper") {
			out = append(out, p)
		}
	}
	return out
}

const (
	uidmap = "uidmap=0:100000:65536"
	gidmap = "gidmap=0:200000:65536"
)

// TestIdmappedOverlay: an overlay with uidmap= and gidmap= (what containerd's
// overlayfs snapshotter gives a user-namespaced container) is mounted with
// its lower layers seen through the mappings, which the kernel's overlay
// would refuse as options (EINVAL); the upper layer is untouched; nothing is
// left but the overlay, and no helper runs.
func TestIdmappedOverlay(t *testing.T) {
	needRoot(t)
	r := startReaper(t)
	root := filepath.Join(t.TempDir(), "snapshots")
	var lowers []string
	for i := 3; i > 0; i-- {
		d := filepath.Join(root, fmt.Sprint(i), "fs")
		layer(t, d, fmt.Sprintf("layer%d", i))
		lowers = append(lowers, d)
	}
	upper, work := filepath.Join(root, "4", "fs"), filepath.Join(root, "4", "work")
	layer(t, upper, "upper")
	if err := os.MkdirAll(work, 0o711); err != nil {
		t.Fatal(err)
	}
	opts := []string{"index=off", "lowerdir=" + strings.Join(lowers, ":"), "upperdir=" + upper, "workdir=" + work}
	bundle := t.TempDir()
	target := filepath.Join(bundle, "rootfs")
	plain := filepath.Join(bundle, "plain")
	os.MkdirAll(plain, 0o755)
	if err := unix.Mount("overlay", plain, "overlay", 0, strings.Join(append(opts, uidmap, gidmap), ",")); !errors.Is(err, unix.EINVAL) {
		unix.Unmount(plain, 0)
		t.Fatalf("the kernel took uidmap= on an overlay (%v): the test proves nothing", err)
	}
	if err := All(target, []*types.Mount{{Type: "overlay", Source: "overlay", Options: append(opts, uidmap, gidmap)}}, r); err != nil {
		t.Fatal(err)
	}
	defer UnmountAll(target)
	for name, want := range map[string]string{
		"layer1-root": "100000:200000", "layer1-user": "101000:201000",
		"layer3-root": "100000:200000", "layer3-user": "101000:201000",
		// the upper layer is the snapshotter's to own: not mapped
		"upper-root": "0:0", "upper-user": "1000:1000",
	} {
		if got := owner(t, filepath.Join(target, name)); got != want {
			t.Errorf("%s owned by %s, want %s", name, got, want)
		}
	}
	// Writes go to the upper layer, as in any overlay.
	if err := os.WriteFile(filepath.Join(target, "layer2-root"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(filepath.Join(upper, "layer2-root")); string(data) != "changed" {
		t.Errorf("the write did not reach the upper layer: %q", data)
	}
	entries, _ := os.ReadDir(bundle)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "idmapped-lower-") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	if m := mountsUnder(t, bundle); len(m) != 1 {
		t.Errorf("mounts under the bundle: %v, want only the rootfs", m)
	}
	if h := helpersLeft(); len(h) != 0 {
		t.Errorf("user namespace helpers left: %v", h)
	}
	if err := UnmountAll(target); err != nil {
		t.Fatal(err)
	}
	if m := mountsUnder(t, bundle); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
}

// TestIdmappedBind: a bind mount with mappings (a single-layer snapshot)
// is seen through them, read-only when asked, and unmounts completely.
func TestIdmappedBind(t *testing.T) {
	needRoot(t)
	r := startReaper(t)
	src := filepath.Join(t.TempDir(), "fs")
	layer(t, src, "bind")
	bundle := t.TempDir()
	target := filepath.Join(bundle, "rootfs")
	if err := All(target, []*types.Mount{{Type: "bind", Source: src, Options: []string{"ro", "rbind", uidmap, gidmap}}}, r); err != nil {
		t.Fatal(err)
	}
	defer UnmountAll(target)
	if got := owner(t, filepath.Join(target, "bind-root")); got != "100000:200000" {
		t.Errorf("bind-root owned by %s", got)
	}
	if got := owner(t, filepath.Join(target, "bind-user")); got != "101000:201000" {
		t.Errorf("bind-user owned by %s", got)
	}
	if err := os.WriteFile(filepath.Join(target, "new"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write to a read-only idmapped bind: %v", err)
	}
	if got := owner(t, filepath.Join(src, "bind-root")); got != "0:0" {
		t.Errorf("the source changed owner: %s", got)
	}
	if err := UnmountAll(target); err != nil {
		t.Fatal(err)
	}
	if m := mountsUnder(t, bundle); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
	if h := helpersLeft(); len(h) != 0 {
		t.Errorf("user namespace helpers left: %v", h)
	}
}

// TestIdmappedMountWithoutMonitor: mappings need a helper process; without
// a monitor to start it the mount fails and nothing is left mounted.
func TestIdmappedMountWithoutMonitor(t *testing.T) {
	needRoot(t)
	src := t.TempDir()
	bundle := t.TempDir()
	target := filepath.Join(bundle, "rootfs")
	if err := All(target, []*types.Mount{{Type: "bind", Source: src, Options: []string{"rbind", uidmap, gidmap}}}, nil); err == nil {
		UnmountAll(target)
		t.Fatal("mounted without a monitor")
	}
	if m := mountsUnder(t, bundle); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

// TestRemoveIdmapDirs: what a shim that died mid-mount left (an attached
// directory of idmapped lower layers) is detached and removed; the rest of
// the bundle is not touched.
func TestRemoveIdmapDirs(t *testing.T) {
	needRoot(t)
	bundle := t.TempDir()
	left, err := os.MkdirTemp(bundle, idmapDirPattern)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", left, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(left, unix.MNT_DETACH)
	keep := filepath.Join(bundle, "rootfs")
	os.Mkdir(keep, 0o711)
	if err := RemoveIdmapDirs(bundle); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there: %v", left, err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("rootfs removed: %v", err)
	}
	if m := mountsUnder(t, bundle); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
}
