package oci

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/proto/runcopts"
	"github.com/tether-shim/tether/proto/runctypes"
	"github.com/tether-shim/tether/proto/runtimeoptions"
)

func TestParseOptions(t *testing.T) {
	if cfg, err := ParseOptions(nil); err != nil || cfg != (Config{}) {
		t.Fatalf("no options: %+v %v", cfg, err)
	}
	data, _ := proto.Marshal(&runcopts.Options{BinaryName: "crun", Root: "/r", SystemdCgroup: true, NoPivotRoot: true, IoUid: 5, IoGid: 6, ShimCgroup: "/shim", CriuPath: "/criu"})
	// containerd sends the bare full name as the type URL.
	cfg, err := ParseOptions(&anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: data})
	want := Config{Binary: "crun", Root: "/r", SystemdCgroup: true, NoPivotRoot: true, IoUID: 5, IoGID: 6, ShimCgroup: "/shim", CriuPath: "/criu"}
	if err != nil || cfg != want {
		t.Fatalf("got %+v %v, want %+v", cfg, err, want)
	}
	// containerd 1.x's client: the v1 linux runtime's create options.
	data, _ = proto.Marshal(&runctypes.CreateOptions{NoPivotRoot: true, NoNewKeyring: true, ShimCgroup: "/s", IoUid: 7, IoGid: 8, CriuImagePath: "/img", CriuWorkPath: "/work", OpenTcp: true})
	cfg, err = ParseOptions(&anypb.Any{TypeUrl: "containerd.linux.runc.CreateOptions", Value: data})
	want = Config{NoPivotRoot: true, NoNewKeyring: true, ShimCgroup: "/s", IoUID: 7, IoGID: 8, CriuImagePath: "/img", CriuWorkPath: "/work"}
	if err != nil || cfg != want {
		t.Fatalf("legacy options: got %+v %v, want %+v", cfg, err, want)
	}
	if _, err := ParseOptions(&anypb.Any{TypeUrl: "example.Unknown", Value: []byte{1}}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("unknown type: %v", err)
	}
	if _, err := ParseOptions(&anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: []byte{0xff, 0xff}}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("garbage value: %v", err)
	}
}

func TestLegacyRestorePath(t *testing.T) {
	legacy, _ := anypb.New(&runctypes.CreateOptions{CriuImagePath: "/img"})
	legacy.TypeUrl = "containerd.linux.runc.CreateOptions"
	if got := LegacyRestorePath(legacy); got != "/img" {
		t.Fatalf("legacy options: %q", got)
	}
	current, _ := anypb.New(&runcopts.Options{CriuImagePath: "/img"})
	if got := LegacyRestorePath(current); got != "" {
		t.Fatalf("runc options are not a restore request: %q", got)
	}
	if LegacyRestorePath(nil) != "" {
		t.Fatal("no options")
	}
}

func TestParseTimeouts(t *testing.T) {
	a, _ := anypb.New(&runtimeoptions.Options{ConfigBody: []byte("RuntimeCallTimeout = \"90s\"\nRuntimeCreateTimeout = \"20m\"\n")})
	cfg, err := ParseOptions(a)
	if err != nil || cfg.CallTimeout != 90*time.Second || cfg.CreateTimeout != 20*time.Minute {
		t.Fatalf("timeouts: %+v %v", cfg, err)
	}
}

func TestConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if cfg, err := LoadConfig(dir); err != nil || cfg != (Config{}) {
		t.Fatalf("missing file: %+v %v", cfg, err)
	}
	want := Config{Binary: "crun", Root: "/x", SystemdCgroup: true}
	if err := want.Save(dir); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadConfig(dir); err != nil || got != want {
		t.Fatalf("got %+v %v", got, err)
	}
}

func TestParseGenericOptions(t *testing.T) {
	body := []byte("BinaryName = \"crun\"\nSystemdCgroup = true\nRoot = \"/run/x\"\nIoUid = 7\n")
	want := Config{Binary: "crun", SystemdCgroup: true, Root: "/run/x", IoUID: 7}
	inline, _ := anypb.New(&runtimeoptions.Options{ConfigBody: body})
	inline.TypeUrl = "runtimeoptions.v1.Options"
	if cfg, err := ParseOptions(inline); err != nil || cfg != want {
		t.Fatalf("inline: %+v %v", cfg, err)
	}
	path := filepath.Join(t.TempDir(), "tether.toml")
	os.WriteFile(path, body, 0o600)
	file, _ := anypb.New(&runtimeoptions.Options{ConfigPath: path, TypeUrl: "containerd.runc.v1.Options"})
	if cfg, err := ParseOptions(file); err != nil || cfg != want {
		t.Fatalf("file: %+v %v", cfg, err)
	}
	for name, o := range map[string]*runtimeoptions.Options{
		"missing file": {ConfigPath: "/nonexistent/tether.toml"},
		"unknown key":  {ConfigBody: []byte("BinaryNmae = \"crun\"\n")},
		"not toml":     {ConfigBody: []byte("[[[")},
		"other type":   {TypeUrl: "io.containerd.kata.v2.Options", ConfigBody: body},
		"wrong kind":   {ConfigBody: []byte("SystemdCgroup = \"yes\"\n")},
		"bad timeout":  {ConfigBody: []byte("RuntimeCallTimeout = \"soon\"\n")},
		"zero timeout": {ConfigBody: []byte("RuntimeCreateTimeout = \"0s\"\n")},
	} {
		a, _ := anypb.New(o)
		if _, err := ParseOptions(a); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
