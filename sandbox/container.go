package sandbox

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tether-shim/tether/internal/atomicfile"
)

// unheldPrefix begins the namespace paths containerd's CRI gives the
// containers of a pod whose SandboxStatus pid is 0, a pod without a
// holder (/proc/<pid>/ns/<kind>, internal/cri/opts/spec_opts.go).
const unheldPrefix = "/proc/0/ns/"

// PrepareContainer points the spec of a container about to be created on
// the shim at the pod's namespaces: each /proc/0/ns/* path containerd's
// CRI wrote in its bundle's config.json becomes the pod's namespace (where
// it is bound, or containerd's network namespace), or goes for a
// namespace the pod shares with the node (the runtime's own, as a
// container joining a pause container on the node's would get). A
// container asking for a namespace the pod does not have (its pid
// namespace, when its containers have one each) is refused. A spec that
// names no such path, or a shim without a pod, is left alone; what is
// wrong with the bundle otherwise is the task core's to report.
func (s *Service) PrepareContainer(bundle string) error {
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	if sb == nil || !filepath.IsAbs(bundle) || filepath.Clean(bundle) != bundle {
		return nil
	}
	path := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil || !bytes.Contains(data, []byte(unheldPrefix)) {
		return nil
	}
	out, err := sb.pointSpec(data)
	if err != nil || out == nil {
		return err
	}
	info, err := os.Stat(path)
	if err == nil {
		err = atomicfile.Write(path, out)
	}
	if err == nil {
		err = os.Chmod(path, info.Mode().Perm())
	}
	if err != nil {
		return fmt.Errorf("point the container at pod %s's namespaces: %w", sb.pod.ID, err)
	}
	return nil
}

// pointSpec is spec (config.json) with its /proc/0/ns/* namespaces
// replaced by the pod's, everything else as it was; nil if it has none or
// does not parse (the task core refuses that one).
func (s *Sandbox) pointSpec(spec []byte) ([]byte, error) {
	var doc, linux map[string]json.RawMessage
	var namespaces []map[string]json.RawMessage
	if json.Unmarshal(spec, &doc) != nil || json.Unmarshal(doc["linux"], &linux) != nil ||
		json.Unmarshal(linux["namespaces"], &namespaces) != nil {
		return nil, nil
	}
	s.mu.Lock()
	ph, pid := s.phase, 0
	if ph == ready {
		pid = s.run.proc.Pid()
	}
	s.mu.Unlock()
	held := s.pod.namespaces(pid)
	kept := make([]map[string]json.RawMessage, 0, len(namespaces))
	changed := false
	for _, ns := range namespaces {
		var kind, path string
		json.Unmarshal(ns["type"], &kind)
		json.Unmarshal(ns["path"], &path)
		if !strings.HasPrefix(path, unheldPrefix) {
			kept = append(kept, ns)
			continue
		}
		changed = true
		if ph != ready {
			return nil, fmt.Errorf("sandbox %s is %v: no container joins its namespaces: %w", s.pod.ID, ph, errdefs.ErrFailedPrecondition)
		}
		target, has := held[specs.LinuxNamespaceType(kind)]
		switch {
		case !has && kind == string(specs.PIDNamespace):
			return nil, fmt.Errorf("the container shares its pod's pid namespace, but pod %s has none: its containers have one each "+
				"(a pod whose containers share one says so itself: namespace_options.pid = POD): %w", s.pod.ID, errdefs.ErrFailedPrecondition)
		case !has:
			return nil, fmt.Errorf("the container's %s namespace %s: pod %s has none: %w", kind, path, s.pod.ID, errdefs.ErrFailedPrecondition)
		case target == "":
			continue // the node's
		}
		ns["path"], _ = json.Marshal(target)
		kept = append(kept, ns)
	}
	if !changed {
		return nil, nil
	}
	var err error
	if linux["namespaces"], err = json.Marshal(kept); err == nil {
		if doc["linux"], err = json.Marshal(linux); err == nil {
			spec, err = json.Marshal(doc)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("container spec: %w", err)
	}
	return spec, nil
}
