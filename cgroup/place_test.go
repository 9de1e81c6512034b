package cgroup

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestPlaceInCgroupfsParent: a pod's holder gets a cgroup of its own below a
// cgroupfs parent, made (with the parent, if it is not there yet) in the v2
// hierarchy or in every v1 hierarchy the parent can be in, its pid written
// to each; RemoveDirs removes them again, and tolerates them gone.
func TestPlaceInCgroupfsParent(t *testing.T) {
	v2root := t.TempDir()
	h := fakeHost(t, unified, "", "")
	h.root = v2root
	dirs, err := h.placeInParent("/kubepods/besteffort/pod1", "tether-holder-s1", 42)
	want := []string{filepath.Join(v2root, "kubepods/besteffort/pod1/tether-holder-s1")}
	if err != nil || !slices.Equal(dirs, want) {
		t.Fatalf("v2: %v %v, want %v", dirs, err, want)
	}
	checkProcs(t, dirs, "42")

	v1root := t.TempDir()
	h = fakeHost(t, hybrid, "", v1Mountinfo(v1root))
	dirs, err = h.placeInParent("kubepods/pod2", "tether-holder-s2", 43)
	if err != nil {
		t.Fatal(err)
	}
	// Every whole hierarchy (memory, cpu, cpuacct, pids, devices); not
	// blkio, of which only /c1 is mounted.
	slices.Sort(dirs)
	want = nil
	for _, c := range []string{"cpu", "cpuacct", "devices", "memory", "pids"} {
		want = append(want, filepath.Join(v1root, c, "kubepods/pod2/tether-holder-s2"))
	}
	if !slices.Equal(dirs, want) {
		t.Fatalf("v1 dirs %v, want %v", dirs, want)
	}
	checkProcs(t, dirs, "43")

	// Once the holder has gone the kernel empties cgroup.procs; here the
	// fake's file goes.
	for _, d := range dirs {
		os.Remove(filepath.Join(d, "cgroup.procs"))
	}
	if err := RemoveDirs(dirs); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", d, err)
		}
	}
	if err := RemoveDirs(dirs); err != nil {
		t.Fatalf("removing again: %v", err)
	}
	if _, err := h.placeInParent("", "x", 1); err == nil {
		t.Fatal("an empty parent was accepted")
	}
}

func checkProcs(t *testing.T, dirs []string, want string) {
	t.Helper()
	for _, d := range dirs {
		if got, err := os.ReadFile(filepath.Join(d, "cgroup.procs")); err != nil || string(got) != want {
			t.Errorf("%s/cgroup.procs: %q %v, want %q", d, got, err, want)
		}
	}
}
