// Package proto holds tether's protos; this test checks the hand-written
// wire-compatible ones against the upstream files they copy.
package proto

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	cri "github.com/tether-shim/tether/proto/cri"
	sandboxapi "github.com/tether-shim/tether/proto/sandbox"
	"github.com/tether-shim/tether/proto/types"
)

// moduleDir is where the Go module cache holds module@version, downloading
// it through the Go toolchain if it is not there yet.
func moduleDir(t *testing.T, module string) string {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", module).Output()
	if err != nil {
		t.Skipf("%s is not in the module cache and cannot be downloaded: %v", module, err)
	}
	var m struct{ Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("go mod download %s: %q %v", module, out, err)
	}
	return m.Dir
}

// upstreamField is a field as a .proto file declares it.
type upstreamField struct {
	kind   string // the type as written ("string", "google.protobuf.Any", "map<string,string>")
	number string
	repeat bool
}

var (
	messageStart = regexp.MustCompile(`^message (\w+) \{`)
	fieldLine    = regexp.MustCompile(`^(repeated |optional )?(map<\s*\w+\s*,\s*[\w.]+\s*>|[\w.]+) (\w+) = (\d+)`)
	rpcLine      = regexp.MustCompile(`^rpc (\w+)\((\w+)\) returns \((\w+)\)`)
)

// parseProto reads the top-level messages' fields and a service's rpcs of
// a .proto file (enough for the files compared here: no nesting is used).
func parseProto(t *testing.T, path string) (map[string]map[string]upstreamField, map[string][2]string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	messages := map[string]map[string]upstreamField{}
	rpcs := map[string][2]string{}
	var current string
	depth := 0
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "//") {
			continue
		}
		if m := messageStart.FindStringSubmatch(line); m != nil && depth == 0 {
			current = m[1]
			messages[current] = map[string]upstreamField{}
		}
		if m := rpcLine.FindStringSubmatch(line); m != nil {
			rpcs[m[1]] = [2]string{m[2], m[3]}
		}
		if m := fieldLine.FindStringSubmatch(line); m != nil && current != "" && depth == 1 {
			messages[current][m[3]] = upstreamField{kind: strings.ReplaceAll(m[2], " ", ""), number: m[4], repeat: m[1] == "repeated "}
		}
		depth += strings.Count(line, "{") - strings.Count(line, "}")
		if depth == 0 {
			current = ""
		}
	}
	return messages, rpcs
}

// kindOf writes a field's type as a .proto file would, relative to pkg.
func kindOf(f protoreflect.FieldDescriptor, pkg protoreflect.FullName) string {
	if f.IsMap() {
		return fmt.Sprintf("map<%s,%s>", kindOf(f.MapKey(), pkg), kindOf(f.MapValue(), pkg))
	}
	var name protoreflect.FullName
	switch f.Kind() {
	case protoreflect.MessageKind:
		name = f.Message().FullName()
	case protoreflect.EnumKind:
		name = f.Enum().FullName()
	default:
		return f.Kind().String()
	}
	if name.Parent() == pkg {
		return string(name.Name())
	}
	return string(name)
}

// compare checks every field of tether's messages in fd against the
// upstream file: same name, number, type and cardinality. Messages and
// fields tether leaves out are allowed (protobuf carries them as unknown
// fields); renamed packages are given as rename (tether's -> upstream's).
func compare(t *testing.T, fd protoreflect.FileDescriptor, upstream string, rename map[string]string) {
	t.Helper()
	messages, rpcs := parseProto(t, upstream)
	pkg := fd.Package()
	for i := 0; i < fd.Messages().Len(); i++ {
		m := fd.Messages().Get(i)
		up, ok := messages[string(m.Name())]
		if !ok {
			t.Errorf("%s: message %s is not upstream's", upstream, m.Name())
			continue
		}
		for j := 0; j < m.Fields().Len(); j++ {
			f := m.Fields().Get(j)
			u, ok := up[string(f.Name())]
			kind := kindOf(f, pkg)
			for from, to := range rename {
				kind = strings.ReplaceAll(kind, from, to)
			}
			if !ok || u.number != fmt.Sprint(f.Number()) || u.kind != kind || u.repeat != (f.Cardinality() == protoreflect.Repeated && !f.IsMap()) {
				t.Errorf("%s.%s: %s %s = %d; upstream %+v", m.Name(), f.Name(), f.Cardinality(), kind, f.Number(), u)
			}
		}
	}
	for i := 0; i < fd.Services().Len(); i++ {
		s := fd.Services().Get(i)
		if s.Methods().Len() != len(rpcs) {
			t.Errorf("service %s has %d methods, upstream %d", s.Name(), s.Methods().Len(), len(rpcs))
		}
		for j := 0; j < s.Methods().Len(); j++ {
			m := s.Methods().Get(j)
			u := rpcs[string(m.Name())]
			if string(m.Input().Name()) != u[0] || string(m.Output().Name()) != u[1] {
				t.Errorf("rpc %s(%s) returns (%s); upstream %v", m.Name(), m.Input().Name(), m.Output().Name(), u)
			}
		}
	}
}

// TestSandboxAPIMatchesContainerds: the sandbox service and the types it
// uses, against containerd api v1.12.0.
func TestSandboxAPIMatchesContainerds(t *testing.T) {
	dir := moduleDir(t, "github.com/containerd/containerd/api@v1.12.0")
	compare(t, sandboxapi.File_sandbox_sandbox_proto, filepath.Join(dir, "runtime/sandbox/v1/sandbox.proto"), nil)
	compare(t, types.File_types_metrics_proto, filepath.Join(dir, "types/metrics.proto"), nil)
	compare(t, types.File_types_platform_proto, filepath.Join(dir, "types/platform.proto"), nil)
}

// TestPodConfigMatchesTheCRIs: the part of PodSandboxConfig tether reads,
// against k8s.io/cri-api (the version go.mod names).
func TestPodConfigMatchesTheCRIs(t *testing.T) {
	dir := moduleDir(t, "k8s.io/cri-api")
	compare(t, cri.File_cri_pod_proto, filepath.Join(dir, "pkg/apis/runtime/v1/api.proto"), nil)
}
