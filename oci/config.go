package oci

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/bundle"
	"github.com/tether-shim/tether/internal/atomicfile"
	"github.com/tether-shim/tether/proto/runcopts"
	"github.com/tether-shim/tether/proto/runctypes"
	"github.com/tether-shim/tether/proto/runtimeoptions"
)

// Default deadlines of runtime calls. A runtime that hangs must not hold a
// container (and every request behind it) forever; creating, checkpointing
// and restoring may run hooks or dump a large memory image, so they get
// more time.
const (
	DefaultCallTimeout   = time.Minute
	DefaultCreateTimeout = 10 * time.Minute
)

// Config is how one container's runtime is run, from containerd's runtime
// options (containerd.runc.v1.Options and the other forms ParseOptions reads).
type Config struct {
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
	// CallTimeout and CreateTimeout bound runtime calls (create, checkpoint
	// and restore take the second); zero means the default. Only tether's
	// TOML options set them.
	CallTimeout   time.Duration `json:"call_timeout,omitempty"`
	CreateTimeout time.Duration `json:"create_timeout,omitempty"`
}

// ParseOptions decodes the runtime options containerd attaches to Create (or
// passes to start and -info): containerd's runc options; the generic
// runtimeoptions.v1 its CRI plugin sends for other runtime types, holding the
// same options as TOML (in a file, or inline with containerd 2.x); or the v1
// linux runtime's create options, which containerd 1.x's client sends to
// runtimes not named io.containerd.runc*. No options means the defaults.
func ParseOptions(a *anypb.Any) (Config, error) {
	if a == nil || (a.GetTypeUrl() == "" && len(a.GetValue()) == 0) {
		return Config{}, nil
	}
	var runcOpts runcopts.Options
	var generic runtimeoptions.Options
	var legacy runctypes.CreateOptions
	switch {
	case a.MessageIs(&runcOpts):
		if err := unmarshal(a, &runcOpts); err != nil {
			return Config{}, err
		}
		return configFromRunc(&runcOpts), nil
	case a.MessageIs(&generic):
		if err := unmarshal(a, &generic); err != nil {
			return Config{}, err
		}
		return configFromTOML(&generic)
	case a.MessageIs(&legacy):
		if err := unmarshal(a, &legacy); err != nil {
			return Config{}, err
		}
		return configFromLegacy(&legacy), nil
	}
	return Config{}, fmt.Errorf("unknown runtime options type %q (want %q, %q or %q): %w",
		a.GetTypeUrl(), proto.MessageName(&runcOpts), proto.MessageName(&generic), proto.MessageName(&legacy), errdefs.ErrInvalidArgument)
}

// ParseCheckpointOptions decodes containerd's CheckpointOptions (none: defaults),
// or the v1 linux runtime's, which containerd 1.x's client sends to runtimes
// not named io.containerd.runc* (the same fields, numbered differently).
func ParseCheckpointOptions(a *anypb.Any) (*runcopts.CheckpointOptions, error) {
	var o runcopts.CheckpointOptions
	var legacy runctypes.CheckpointOptions
	switch {
	case a == nil || (a.GetTypeUrl() == "" && len(a.GetValue()) == 0):
		return &o, nil
	case a.MessageIs(&o):
		if err := unmarshal(a, &o); err != nil {
			return nil, err
		}
		return &o, nil
	case a.MessageIs(&legacy):
		if err := unmarshal(a, &legacy); err != nil {
			return nil, err
		}
		return &runcopts.CheckpointOptions{
			Exit: legacy.GetExit(), OpenTcp: legacy.GetOpenTcp(), ExternalUnixSockets: legacy.GetExternalUnixSockets(),
			Terminal: legacy.GetTerminal(), FileLocks: legacy.GetFileLocks(), EmptyNamespaces: legacy.GetEmptyNamespaces(),
			CgroupsMode: legacy.GetCgroupsMode(), ImagePath: legacy.GetImagePath(), WorkPath: legacy.GetWorkPath(),
		}, nil
	}
	return nil, fmt.Errorf("unknown checkpoint options type %q (want %q or %q): %w",
		a.GetTypeUrl(), proto.MessageName(&o), proto.MessageName(&legacy), errdefs.ErrInvalidArgument)
}

// LegacyRestorePath is the checkpoint a task is to be restored from when
// containerd 1.x's client asked for it with the v1 linux runtime's create
// options (WithRestoreImagePath): containerd's daemon turns that into the
// request's checkpoint only for runtimes it knows (runc, linux v1), so for
// tether the shim does it. Empty otherwise.
func LegacyRestorePath(a *anypb.Any) string {
	var legacy runctypes.CreateOptions
	if a == nil || !a.MessageIs(&legacy) || unmarshal(a, &legacy) != nil {
		return ""
	}
	return legacy.GetCriuImagePath()
}

func unmarshal(a *anypb.Any, m proto.Message) error {
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return fmt.Errorf("decode %s: %v: %w", proto.MessageName(m), err, errdefs.ErrInvalidArgument)
	}
	return nil
}

func configFromRunc(o *runcopts.Options) Config {
	return Config{
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

// configFromLegacy reads the v1 linux runtime's create options. Their other
// fields (open_tcp, file_locks, ...) were restore flags of the v1 shim; a
// restore here takes them from the checkpoint.
func configFromLegacy(o *runctypes.CreateOptions) Config {
	return Config{
		NoPivotRoot:   o.GetNoPivotRoot(),
		NoNewKeyring:  o.GetNoNewKeyring(),
		IoUID:         o.GetIoUid(),
		IoGID:         o.GetIoGid(),
		ShimCgroup:    o.GetShimCgroup(),
		CriuImagePath: o.GetCriuImagePath(),
		CriuWorkPath:  o.GetCriuWorkPath(),
	}
}

// tomlOptions are the runc options under the names containerd's CRI
// configuration gives them (plugins.cri...runtimes.<name>.options), and
// tether's own runtime call deadlines.
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
	// RuntimeCallTimeout and RuntimeCreateTimeout are Go durations ("90s").
	RuntimeCallTimeout   string
	RuntimeCreateTimeout string
	// TypeUrl and ConfigPath are the generic options' own keys, which
	// containerd 2.x leaves in the body it forwards.
	TypeUrl    string //nolint:revive // containerd's spelling
	ConfigPath string
}

// maxConfigSize bounds a runtime options file.
const maxConfigSize = 1 << 20

func configFromTOML(o *runtimeoptions.Options) (Config, error) {
	if t := o.GetTypeUrl(); t != "" && t != string(proto.MessageName(&runcopts.Options{})) {
		return Config{}, fmt.Errorf("runtime options config of type %q: only %q is understood: %w",
			t, proto.MessageName(&runcopts.Options{}), errdefs.ErrInvalidArgument)
	}
	body := o.GetConfigBody()
	if path := o.GetConfigPath(); path != "" {
		var err error
		if body, err = readConfigFile(path); err != nil {
			return Config{}, err
		}
	}
	var t tomlOptions
	dec := toml.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			return Config{}, fmt.Errorf("runtime options config has unknown keys:\n%s: %w", strict.String(), errdefs.ErrInvalidArgument)
		}
		return Config{}, fmt.Errorf("runtime options config is not valid: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	cfg := Config{
		Binary: t.BinaryName, Root: t.Root, SystemdCgroup: t.SystemdCgroup,
		NoPivotRoot: t.NoPivotRoot, NoNewKeyring: t.NoNewKeyring, IoUID: t.IoUid, IoGID: t.IoGid,
		ShimCgroup: t.ShimCgroup, CriuPath: t.CriuPath, CriuImagePath: t.CriuImagePath, CriuWorkPath: t.CriuWorkPath,
	}
	var err error
	if cfg.CallTimeout, err = parseTimeout("RuntimeCallTimeout", t.RuntimeCallTimeout); err != nil {
		return Config{}, err
	}
	if cfg.CreateTimeout, err = parseTimeout("RuntimeCreateTimeout", t.RuntimeCreateTimeout); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

func readConfigFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("runtime options config: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	defer f.Close()
	body, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read runtime options config: %w", err)
	}
	if len(body) > maxConfigSize {
		return nil, fmt.Errorf("runtime options config %s is over %d bytes: %w", path, maxConfigSize, errdefs.ErrInvalidArgument)
	}
	return body, nil
}

func parseTimeout(key, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("runtime options config: %s = %q is not a positive duration: %w", key, s, errdefs.ErrInvalidArgument)
	}
	return d, nil
}

// Save writes c into the bundle dir, whole or not at all, for the delete
// action after a lost shim.
func (c Config) Save(dir string) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, bundle.RuntimeConfigFile), data)
}

// LoadConfig reads the config saved in the bundle dir; a bundle without one
// (the shim died before Create finished) gets the defaults.
func LoadConfig(dir string) (Config, error) {
	var c Config
	data, err := os.ReadFile(filepath.Join(dir, bundle.RuntimeConfigFile))
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("decode %s: %w", bundle.RuntimeConfigFile, err)
	}
	return c, nil
}
