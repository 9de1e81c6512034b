package shim

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/proto/runcopts"
)

func TestParseOptions(t *testing.T) {
	if cfg, err := ParseOptions(nil); err != nil || cfg != (RuntimeConfig{}) {
		t.Fatalf("no options: %+v %v", cfg, err)
	}
	data, _ := proto.Marshal(&runcopts.Options{BinaryName: "crun", Root: "/r", SystemdCgroup: true, NoPivotRoot: true, IoUid: 5, IoGid: 6, ShimCgroup: "/shim", CriuPath: "/criu"})
	// containerd sends the bare full name as the type URL.
	cfg, err := ParseOptions(&anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: data})
	want := RuntimeConfig{Binary: "crun", Root: "/r", SystemdCgroup: true, NoPivotRoot: true, IoUID: 5, IoGID: 6, ShimCgroup: "/shim", CriuPath: "/criu"}
	if err != nil || cfg != want {
		t.Fatalf("got %+v %v, want %+v", cfg, err, want)
	}
	if _, err := ParseOptions(&anypb.Any{TypeUrl: "example.Unknown", Value: []byte{1}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("unknown type: %v", err)
	}
	if _, err := ParseOptions(&anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: []byte{0xff, 0xff}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("garbage value: %v", err)
	}
}

func TestRuntimeConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if cfg, err := LoadRuntimeConfig(dir); err != nil || cfg != (RuntimeConfig{}) {
		t.Fatalf("missing file: %+v %v", cfg, err)
	}
	want := RuntimeConfig{Binary: "crun", Root: "/x", SystemdCgroup: true}
	if err := want.save(dir); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadRuntimeConfig(dir); err != nil || got != want {
		t.Fatalf("got %+v %v", got, err)
	}
}
