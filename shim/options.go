package shim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/pelletier/go-toml/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/proto/runcopts"
	"github.com/tether-shim/tether/proto/runctypes"
	"github.com/tether-shim/tether/proto/runtimeoptions"
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
// passes to start): containerd's runc options, or the generic
// runtimeoptions.v1 its CRI plugin sends for other runtime types, holding the
// same options as TOML (in a file, or inline with containerd 2.x). No options
// means the defaults.
func ParseOptions(a *anypb.Any) (RuntimeConfig, error) {
	if a == nil || (a.GetTypeUrl() == "" && len(a.GetValue()) == 0) {
		return RuntimeConfig{}, nil
	}
	var runcOpts runcopts.Options
	var generic runtimeoptions.Options
	var legacy runctypes.CreateOptions
	switch {
	case a.MessageIs(&runcOpts):
		if err := unmarshalOptions(a, &runcOpts); err != nil {
			return RuntimeConfig{}, err
		}
		return configFromRunc(&runcOpts), nil
	case a.MessageIs(&generic):
		if err := unmarshalOptions(a, &generic); err != nil {
			return RuntimeConfig{}, err
		}
		return configFromTOML(&generic)
	case a.MessageIs(&legacy):
		if err := unmarshalOptions(a, &legacy); err != nil {
			return RuntimeConfig{}, err
		}
		return configFromLegacy(&legacy), nil
	}
	return RuntimeConfig{}, fmt.Errorf("unknown runtime options type %q (want %q, %q or %q): %w",
		a.GetTypeUrl(), proto.MessageName(&runcOpts), proto.MessageName(&generic), proto.MessageName(&legacy), ErrInvalidArgument)
}

func unmarshalOptions(a *anypb.Any, m proto.Message) error {
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return fmt.Errorf("decode runtime options %s: %v: %w", proto.MessageName(m), err, ErrInvalidArgument)
	}
	return nil
}

// configFromLegacy reads the v1 linux runtime's create options, which
// containerd 1.x's client sends to runtimes not named io.containerd.runc*.
// Their other fields (open_tcp, file_locks, ...) were restore flags of the
// v1 shim; a restore here takes them from the checkpoint.
func configFromLegacy(o *runctypes.CreateOptions) RuntimeConfig {
	return RuntimeConfig{
		NoPivotRoot:   o.GetNoPivotRoot(),
		NoNewKeyring:  o.GetNoNewKeyring(),
		IoUID:         o.GetIoUid(),
		IoGID:         o.GetIoGid(),
		ShimCgroup:    o.GetShimCgroup(),
		CriuImagePath: o.GetCriuImagePath(),
		CriuWorkPath:  o.GetCriuWorkPath(),
	}
}

func configFromRunc(o *runcopts.Options) RuntimeConfig {
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
	}
}

// tomlOptions are the runc options under the names containerd's CRI
// configuration gives them (plugins.cri...runtimes.<name>.options).
type tomlOptions struct {
	BinaryName    string
	Root          string
	SystemdCgroup bool
	NoPivotRoot   bool
	NoNewKeyring  bool
	IoUid         uint32 //nolint:revive // containerd's spelling
	IoGid         uint32 //nolint:revive // containerd's spelling
	ShimCgroup    string
	CriuPath      string
	CriuImagePath string
	CriuWorkPath  string
	// TypeUrl and ConfigPath are the generic options' own keys, which
	// containerd 2.x leaves in the body it forwards.
	TypeUrl    string //nolint:revive // containerd's spelling
	ConfigPath string
}

// maxConfigSize bounds a runtime options file.
const maxConfigSize = 1 << 20

func configFromTOML(o *runtimeoptions.Options) (RuntimeConfig, error) {
	if t := o.GetTypeUrl(); t != "" && t != string(proto.MessageName(&runcopts.Options{})) {
		return RuntimeConfig{}, fmt.Errorf("runtime options config of type %q: only %q is understood: %w",
			t, proto.MessageName(&runcopts.Options{}), ErrInvalidArgument)
	}
	body := o.GetConfigBody()
	if path := o.GetConfigPath(); path != "" {
		f, err := os.Open(path)
		if err != nil {
			return RuntimeConfig{}, fmt.Errorf("runtime options config: %v: %w", err, ErrInvalidArgument)
		}
		defer f.Close()
		if body, err = io.ReadAll(io.LimitReader(f, maxConfigSize+1)); err != nil {
			return RuntimeConfig{}, fmt.Errorf("read runtime options config: %w", err)
		}
		if len(body) > maxConfigSize {
			return RuntimeConfig{}, fmt.Errorf("runtime options config %s is over %d bytes: %w", path, maxConfigSize, ErrInvalidArgument)
		}
	}
	var t tomlOptions
	dec := toml.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			return RuntimeConfig{}, fmt.Errorf("runtime options config has unknown keys:\n%s: %w", strict.String(), ErrInvalidArgument)
		}
		return RuntimeConfig{}, fmt.Errorf("runtime options config is not valid: %v: %w", err, ErrInvalidArgument)
	}
	return RuntimeConfig{
		Binary: t.BinaryName, Root: t.Root, SystemdCgroup: t.SystemdCgroup,
		NoPivotRoot: t.NoPivotRoot, NoNewKeyring: t.NoNewKeyring, IoUID: t.IoUid, IoGID: t.IoGid,
		ShimCgroup: t.ShimCgroup, CriuPath: t.CriuPath, CriuImagePath: t.CriuImagePath, CriuWorkPath: t.CriuWorkPath,
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
