package manager

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/proto/runcopts"
	"github.com/tether-shim/tether/proto/types"
)

// fakeRuntime writes a runtime script answering `features` with script.
func fakeRuntime(t *testing.T, script string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake-runtime")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func runInfoWith(t *testing.T, opts proto.Message) (*types.RuntimeInfo, string) {
	t.Helper()
	var stdin []byte
	if opts != nil {
		a, err := anypb.New(opts)
		if err != nil {
			t.Fatal(err)
		}
		a.TypeUrl = string(proto.MessageName(opts)) // as containerd's typeurl names it
		if stdin, err = proto.Marshal(a); err != nil {
			t.Fatal(err)
		}
	}
	var stdout, stderr bytes.Buffer
	if err := Info(bytes.NewReader(stdin), &stdout, &stderr, "v-test"); err != nil {
		t.Fatalf("info: %v", err)
	}
	var ri types.RuntimeInfo
	if err := proto.Unmarshal(stdout.Bytes(), &ri); err != nil {
		t.Fatalf("stdout is not a RuntimeInfo: %v", err)
	}
	return &ri, stderr.String()
}

// TestInfoReportsTheNamedRuntimesFeatures: the BinaryName in the options
// decides whose features are reported; they travel as containerd's typeurl
// names the OCI features document.
func TestInfoReportsTheNamedRuntimesFeatures(t *testing.T) {
	doc := `{"ociVersionMin":"1.0.0","linux":{"namespaces":["user"],"mountExtensions":{"idmap":{"enabled":true}}}}`
	rt := fakeRuntime(t, `[ "$1" = features ] && echo '`+doc+`'`)
	ri, _ := runInfoWith(t, &runcopts.Options{BinaryName: rt})
	if ri.GetName() != RuntimeName || ri.GetVersion().GetVersion() != "v-test" {
		t.Errorf("name %q version %q", ri.GetName(), ri.GetVersion().GetVersion())
	}
	if ri.GetFeatures().GetTypeUrl() != featuresTypeURL || strings.TrimSpace(string(ri.GetFeatures().GetValue())) != doc {
		t.Errorf("features %q %q", ri.GetFeatures().GetTypeUrl(), ri.GetFeatures().GetValue())
	}
	if ri.GetOptions().GetTypeUrl() != "containerd.runc.v1.Options" {
		t.Errorf("options not echoed: %v", ri.GetOptions())
	}
}

// TestInfoWithoutFeaturesCommand: a runtime that has no `features` gets an
// info without features and a reason on stderr, not a failure.
func TestInfoWithoutFeaturesCommand(t *testing.T) {
	rt := fakeRuntime(t, `echo "unknown command $1" >&2; exit 1`)
	ri, stderr := runInfoWith(t, &runcopts.Options{BinaryName: rt})
	if ri.GetFeatures() != nil {
		t.Errorf("features from a runtime without the command: %v", ri.GetFeatures())
	}
	if !strings.Contains(stderr, "unknown command features") {
		t.Errorf("stderr %q does not give the runtime's reason", stderr)
	}
}

func TestInfoRejectsUnknownOptions(t *testing.T) {
	a, _ := proto.Marshal(&anypb.Any{TypeUrl: "example.Unknown", Value: []byte{1}})
	var stdout, stderr bytes.Buffer
	if err := Info(bytes.NewReader(a), &stdout, &stderr, "v-test"); err == nil || stdout.Len() != 0 {
		t.Fatalf("unknown options type: err %v, stdout %d bytes", err, stdout.Len())
	}
}
