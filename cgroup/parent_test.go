package cgroup

import (
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

func TestParentPath(t *testing.T) {
	for parent, want := range map[string]string{
		"/kubepods/besteffort/pod1":        "/kubepods/besteffort/pod1",
		"kubepods/burstable/pod2":          "/kubepods/burstable/pod2",
		"/a/../b":                          "/b",
		"kubepods-besteffort-pod1.slice":   "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice",
		"kubepods.slice":                   "/kubepods.slice",
		"-.slice":                          "/",
		"/kubepods.slice/kubepods-x.slice": "/kubepods.slice/kubepods-x.slice",
	} {
		got, err := parentPath(parent)
		if err != nil || got != want {
			t.Errorf("parentPath(%q) = %q, %v; want %q", parent, got, err, want)
		}
	}
	for _, bad := range []string{"", "a--b.slice", "-a.slice"} {
		if got, err := parentPath(bad); err == nil {
			t.Errorf("parentPath(%q) = %q, want an error", bad, got)
		}
	}
}

// TestLoadParent loads a pod's cgroup parent from the test hierarchies: v2
// under the root, v1 in every hierarchy; a parent that is not there (yet)
// is NotFound.
func TestLoadParent(t *testing.T) {
	v2root, _ := filepath.Abs("testdata/cgroupv2")
	h := fakeHost(t, unified, "", "")
	h.root = v2root
	cg, err := h.LoadParent("/tether/c1")
	if err != nil {
		t.Fatal(err)
	}
	if cg.Path().V2 != filepath.Join(v2root, "tether/c1") {
		t.Fatalf("v2 parent at %v", cg.Path())
	}
	if _, err := cg.Metrics(); err != nil {
		t.Fatalf("v2 parent metrics: %v", err)
	}
	if _, err := h.LoadParent("/tether/absent"); !errdefs.IsNotFound(err) {
		t.Fatalf("absent v2 parent: %v, want NotFound", err)
	}

	v1root, _ := filepath.Abs("testdata/cgroupv1")
	h = fakeHost(t, hybrid, "", v1Mountinfo(v1root))
	cg, err = h.LoadParent("c1")
	if err != nil {
		t.Fatal(err)
	}
	if got := cg.Path().V1["memory"]; got != filepath.Join(v1root, "memory/c1") {
		t.Fatalf("v1 memory parent at %q", got)
	}
	if _, err := cg.Metrics(); err != nil {
		t.Fatalf("v1 parent metrics: %v", err)
	}
	if _, err := h.LoadParent("absent.slice"); !errdefs.IsNotFound(err) {
		t.Fatalf("absent v1 parent: %v, want NotFound", err)
	}
}
