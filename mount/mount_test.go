package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/proto/types"
)

func TestParseMount(t *testing.T) {
	cases := []struct {
		m                 *types.Mount
		flags, propagated uintptr
		data              string
	}{
		{&types.Mount{Type: "overlay", Source: "overlay", Options: []string{"index=off", "lowerdir=/l1:/l2", "upperdir=/u", "workdir=/w"}},
			0, 0, "index=off,lowerdir=/l1:/l2,upperdir=/u,workdir=/w"},
		{&types.Mount{Type: "bind", Source: "/src", Options: []string{"rbind", "ro"}},
			unix.MS_BIND | unix.MS_REC | unix.MS_RDONLY, 0, ""},
		{&types.Mount{Type: "bind", Source: "/src", Options: []string{"ro", "rw", "nosuid", "rprivate"}},
			unix.MS_BIND | unix.MS_NOSUID, unix.MS_PRIVATE | unix.MS_REC, ""},
		{&types.Mount{Type: "tmpfs", Source: "tmpfs", Options: []string{"nodev", "size=64m", "mode=755"}},
			unix.MS_NODEV, 0, "size=64m,mode=755"},
	}
	for _, c := range cases {
		pm, err := parse(c.m)
		if err != nil {
			t.Errorf("%v: %v", c.m.Options, err)
			continue
		}
		if pm.flags != c.flags || pm.propagation != c.propagated || pm.data != c.data {
			t.Errorf("%v: flags %#x prop %#x data %q; want %#x %#x %q", c.m.Options, pm.flags, pm.propagation, pm.data, c.flags, c.propagated, c.data)
		}
	}
	for _, m := range []*types.Mount{
		{Type: "", Source: "x"},
		{Type: "ext4", Source: "/img", Options: []string{"loop"}},
		{Type: "tmpfs", Source: "tmpfs", Options: []string{"size=" + strings.Repeat("1", 5000)}},
	} {
		if _, err := parse(m); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s mount with %d bytes of options accepted (%v)", m.Type, len(strings.Join(m.Options, ",")), err)
		}
	}
}

// TestLongOverlayIsShortened: 120 layers under one snapshots directory make
// more than a page of options; relative to that directory they fit.
func TestLongOverlayIsShortened(t *testing.T) {
	root := "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots"
	var layers []string
	for i := 120; i > 0; i-- {
		layers = append(layers, fmt.Sprintf("%s/%d/fs", root, i))
	}
	pm, err := parse(&types.Mount{Type: "overlay", Source: "overlay", Options: []string{
		"index=off", "lowerdir=" + strings.Join(layers, ":"), "upperdir=" + root + "/121/fs", "workdir=" + root + "/121/work"}})
	if err != nil {
		t.Fatal(err)
	}
	if pm.dir != root {
		t.Fatalf("mount from %q, want %q", pm.dir, root)
	}
	if !strings.Contains(pm.data, "lowerdir=120/fs:119/fs:") || !strings.Contains(pm.data, "upperdir="+root+"/121/fs") {
		t.Fatalf("data %q", pm.data)
	}
}

// TestMountFromOverlayOfManyLayers mounts a real overlay of 150 layers,
// whose absolute options are too long for one mount call.
func TestMountFromOverlayOfManyLayers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: mounting needs root")
	}
	root := filepath.Join(t.TempDir(), strings.Repeat("long-snapshot-directory-name", 2))
	var layers []string
	for i := 150; i > 0; i-- {
		d := filepath.Join(root, fmt.Sprint(i), "fs")
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, fmt.Sprintf("layer-%d", i)), nil, 0o644)
		layers = append(layers, d)
	}
	upper, work, target := filepath.Join(root, "up"), filepath.Join(root, "work"), filepath.Join(root, "rootfs")
	for _, d := range []string{upper, work} {
		os.MkdirAll(d, 0o755)
	}
	opts := []string{"lowerdir=" + strings.Join(layers, ":"), "upperdir=" + upper, "workdir=" + work}
	if n := len(strings.Join(opts, ",")); n < os.Getpagesize() {
		t.Fatalf("options are only %d bytes: the test would prove nothing", n)
	}
	if err := All(target, []*types.Mount{{Type: "overlay", Source: "overlay", Options: opts}}, nil); err != nil {
		t.Fatal(err)
	}
	defer UnmountAll(target)
	for _, i := range []int{1, 75, 150} {
		if _, err := os.Stat(filepath.Join(target, fmt.Sprintf("layer-%d", i))); err != nil {
			t.Errorf("layer %d not in the overlay: %v", i, err)
		}
	}
}
