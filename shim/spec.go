package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
)

// ociSpec is the part of the bundle's config.json the shim reads.
type ociSpec struct {
	Process *struct {
		Terminal bool `json:"terminal"`
	} `json:"process"`
	Linux *struct {
		Namespaces []struct {
			Type string `json:"type"`
			Path string `json:"path"`
		} `json:"namespaces"`
	} `json:"linux"`
}

// readSpec checks that bundle is a usable OCI bundle and returns its config.
func readSpec(bundle string) (*ociSpec, error) {
	if !filepath.IsAbs(bundle) || filepath.Clean(bundle) != bundle {
		return nil, fmt.Errorf("bundle path %q must be absolute and clean: %w", bundle, errdefs.ErrInvalidArgument)
	}
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("bundle %s has no config.json: %w", bundle, errdefs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("read bundle config: %w", err)
	}
	var spec ociSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("bundle %s: config.json is not valid JSON: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("bundle %s: config.json has no process: %w", bundle, errdefs.ErrInvalidArgument)
	}
	return &spec, nil
}

func (s *ociSpec) ownPidNamespace() bool {
	if s.Linux == nil {
		return false
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == "pid" {
			return ns.Path == ""
		}
	}
	return false
}
