package sandbox

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
)

// containerSpec is a container's config.json as containerd's CRI writes
// it for a pod whose SandboxStatus pid was pid, with fields tether does
// not know (which must survive a rewrite as they are).
func containerSpec(pid string, pidNS bool) map[string]any {
	ns := []any{
		map[string]any{"type": "network", "path": "/proc/" + pid + "/ns/net"},
		map[string]any{"type": "ipc", "path": "/proc/" + pid + "/ns/ipc"},
		map[string]any{"type": "uts", "path": "/proc/" + pid + "/ns/uts"},
		map[string]any{"type": "mount"},
		map[string]any{"type": "cgroup"},
	}
	if pidNS {
		ns = append(ns, map[string]any{"type": "pid", "path": "/proc/" + pid + "/ns/pid"})
	}
	return map[string]any{
		"ociVersion":  "1.2.1",
		"process":     map[string]any{"args": []any{"sleep", "1"}, "user": map[string]any{"uid": 0.0, "gid": 0.0}},
		"annotations": map[string]any{"io.kubernetes.cri.sandbox-id": "pod1"},
		"futureField": map[string]any{"big": 12345678901234567890.0},
		"linux": map[string]any{
			"namespaces":       ns,
			"resources":        map[string]any{"memory": map[string]any{"limit": 1048576.0}},
			"futureLinuxField": true,
		},
	}
}

func writeSpec(t *testing.T, spec map[string]any) string {
	t.Helper()
	bundle := t.TempDir()
	data, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return bundle
}

func readSpecOf(t *testing.T, bundle string) map[string]any {
	t.Helper()
	var spec map[string]any
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err == nil {
		err = json.Unmarshal(data, &spec)
	}
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// readyService is a service holding pod p, ready on a fake keeper (pid 0:
// no holder, unless holder).
func readyService(t *testing.T, p Pod, holder bool) *Service {
	t.Helper()
	e := &fakeEnv{noHolder: !holder}
	svc := &Service{namespace: "k8s.io", env: e.env()}
	p.ID, p.Bundle = "pod1", t.TempDir()
	svc.sb = newSandbox(p, svc.env)
	if _, _, err := svc.sb.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return svc
}

// TestContainerPointedAtThePod: a container of a pod without a holder
// comes with /proc/0/ns/* in its spec (the CRI's paths for pid 0); the
// shim points them at the pod's namespaces (containerd's network
// namespace, the bound UTS and IPC ones), leaves out those the pod shares
// with the node, and keeps everything else of the spec as it was, its
// file mode too.
func TestContainerPointedAtThePod(t *testing.T) {
	const netns = "/var/run/netns/cni-1"
	for _, c := range []struct {
		name  string
		pod   Pod
		pidNS bool
		want  func(Pod) []any
	}{
		{"pod network, own IPC", Pod{NetNS: netns, OwnUTS: true, OwnIPC: true}, false, func(p Pod) []any {
			return []any{
				map[string]any{"type": "network", "path": netns},
				map[string]any{"type": "ipc", "path": p.mounts().IPC},
				map[string]any{"type": "uts", "path": p.mounts().UTS},
				map[string]any{"type": "mount"}, map[string]any{"type": "cgroup"},
			}
		}},
		{"node network, node IPC and pid", Pod{PID: pidNode}, true, func(Pod) []any {
			return []any{map[string]any{"type": "mount"}, map[string]any{"type": "cgroup"}}
		}},
	} {
		svc := readyService(t, c.pod, false)
		p := svc.sb.pod
		bundle := writeSpec(t, containerSpec("0", c.pidNS))
		if err := svc.PrepareContainer(bundle); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := readSpecOf(t, bundle)
		want := containerSpec("0", c.pidNS)
		want["linux"].(map[string]any)["namespaces"] = c.want(p)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: spec\n%v\nwant\n%v", c.name, got, want)
		}
		if st, err := os.Stat(filepath.Join(bundle, "config.json")); err != nil || st.Mode().Perm() != 0o644 {
			t.Errorf("%s: config.json mode %v %v", c.name, st.Mode(), err)
		}
	}
}

// TestContainerLeftAlone: a spec that names real namespaces (a pod with a
// holder, any container of a shim without a pod, a bundle that is not one)
// is not touched.
func TestContainerLeftAlone(t *testing.T) {
	withHolder := readyService(t, Pod{OwnUTS: true, OwnIPC: true, PID: pidShared}, true)
	none := &Service{namespace: "k8s.io", env: (&fakeEnv{}).env()}
	for name, svc := range map[string]*Service{"a pod with a holder": withHolder, "no pod": none} {
		bundle := writeSpec(t, containerSpec("100", true))
		before, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
		if err := svc.PrepareContainer(bundle); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if after, _ := os.ReadFile(filepath.Join(bundle, "config.json")); string(after) != string(before) {
			t.Errorf("%s: spec rewritten", name)
		}
	}
	for _, bundle := range []string{"relative", "/a/../b", t.TempDir()} {
		if err := withHolder.PrepareContainer(bundle); err != nil {
			t.Errorf("bundle %q: %v (the task core's to report)", bundle, err)
		}
	}
}

// TestContainerRefusedWhatThePodHasNot: a container that asks for the
// pod's pid namespace when its containers have one each, or that comes
// after the pod stopped, is refused (FailedPrecondition) and its spec left
// as it was.
func TestContainerRefusedWhatThePodHasNot(t *testing.T) {
	svc := readyService(t, Pod{OwnUTS: true, OwnIPC: true, PID: pidPerContainer}, false)
	bundle := writeSpec(t, containerSpec("0", true))
	before, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err := svc.PrepareContainer(bundle); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("the pod's pid namespace of a pod without one: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(bundle, "config.json")); string(after) != string(before) {
		t.Fatal("a refused spec was rewritten")
	}
	stopWithin(t, svc.sb, stopGrace)
	bundle = writeSpec(t, containerSpec("0", false))
	if err := svc.PrepareContainer(bundle); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("a container of a stopped pod: %v", err)
	}
}
