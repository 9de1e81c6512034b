package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/proto/runcopts"
)

// runtimeConfigFile holds a container's RuntimeConfig in its bundle, so the
// delete action can drive the same runtime after the shim is gone.
const runtimeConfigFile = "tether-runtime.json"

// RuntimeConfig is how one container's runtime is run, from containerd's
// runtime options (containerd.runc.v1.Options).
type RuntimeConfig struct {
	Binary        string `json:"binary,omitempty"` // runtime binary name or path; runc if empty
	Root          string `json:"root,omitempty"`   // runtime state root; the namespace is appended
	SystemdCgroup bool   `json:"systemd_cgroup,omitempty"`
	NoPivotRoot   bool   `json:"no_pivot_root,omitempty"`
	NoNewKeyring  bool   `json:"no_new_keyring,omitempty"`
	IoUID         uint32 `json:"io_uid,omitempty"` // owner of the process's stdio pipes
	IoGID         uint32 `json:"io_gid,omitempty"`
	ShimCgroup    string `json:"shim_cgroup,omitempty"`
	CriuPath      string `json:"criu_path,omitempty"`
	CriuImagePath string `json:"criu_image_path,omitempty"`
	CriuWorkPath  string `json:"criu_work_path,omitempty"`
}

// ParseOptions decodes the runtime options containerd attaches to Create (or
// passes to start on stdin). No options means the defaults.
func ParseOptions(a *anypb.Any) (RuntimeConfig, error) {
	if a == nil || (a.GetTypeUrl() == "" && len(a.GetValue()) == 0) {
		return RuntimeConfig{}, nil
	}
	var o runcopts.Options
	if !a.MessageIs(&o) {
		return RuntimeConfig{}, fmt.Errorf("unknown runtime options type %q (want %q): %w",
			a.GetTypeUrl(), proto.MessageName(&o), ErrInvalidArgument)
	}
	if err := proto.Unmarshal(a.GetValue(), &o); err != nil {
		return RuntimeConfig{}, fmt.Errorf("decode runtime options: %v: %w", err, ErrInvalidArgument)
	}
	return RuntimeConfig{
		Binary:        o.GetBinaryName(),
		Root:          o.GetRoot(),
		SystemdCgroup: o.GetSystemdCgroup(),
		NoPivotRoot:   o.GetNoPivotRoot(),
		NoNewKeyring:  o.GetNoNewKeyring(),
		IoUID:         o.GetIoUid(),
		IoGID:         o.GetIoGid(),
		ShimCgroup:    o.GetShimCgroup(),
		CriuPath:      o.GetCriuPath(),
		CriuImagePath: o.GetCriuImagePath(),
		CriuWorkPath:  o.GetCriuWorkPath(),
	}, nil
}

// save writes c into the bundle atomically.
func (c RuntimeConfig) save(bundle string) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(bundle, runtimeConfigFile), data)
}

// LoadRuntimeConfig reads the config saved in bundle; a bundle without one
// (the shim died before Create finished) gets the defaults.
func LoadRuntimeConfig(bundle string) (RuntimeConfig, error) {
	var c RuntimeConfig
	data, err := os.ReadFile(filepath.Join(bundle, runtimeConfigFile))
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("decode %s: %w", runtimeConfigFile, err)
	}
	return c, nil
}

// writeFileAtomic replaces path with data, so readers see all of it or none.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
