package manager

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/oci"
	"github.com/tether-shim/tether/proto/types"
)

// RuntimeName is the runtime containerd knows tether by.
const RuntimeName = "io.containerd.tether.v2"

// featuresTypeURL is how containerd's typeurl names the OCI runtime features
// document (a JSON value): core/runtime/typeurl.go.
const featuresTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"

// Info implements -info, which containerd 2.x runs to learn what a runtime
// handler supports (user namespaces, idmapped and recursive read-only
// mounts): the runtime options arrive on stdin (an Any, or nothing), a
// containerd.types.RuntimeInfo goes to stdout. The features are those of the
// OCI runtime the options name, as `<runtime> features` reports them; a
// runtime without that command is named on stderr and the info carries no
// features, as containerd's runc shim answers.
func Info(stdin io.Reader, stdout, stderr io.Writer, version string) error {
	data, err := io.ReadAll(io.LimitReader(stdin, maxOptionsSize))
	if err != nil {
		return fmt.Errorf("read runtime options: %w", err)
	}
	var opts *anypb.Any
	if len(data) > 0 {
		opts = &anypb.Any{}
		if err := proto.Unmarshal(data, opts); err != nil {
			return fmt.Errorf("decode runtime options from stdin: %w", err)
		}
	}
	cfg, err := oci.ParseOptions(opts)
	if err != nil {
		return err
	}
	ri := &types.RuntimeInfo{
		Name:    RuntimeName,
		Version: &types.RuntimeVersion{Version: version},
		Options: opts,
	}
	if doc, err := oci.Features(context.Background(), cfg); err != nil {
		fmt.Fprintf(stderr, "containerd-shim-tether-v2: -info: no runtime features: %v\n", err)
	} else {
		ri.Features = &anypb.Any{TypeUrl: featuresTypeURL, Value: doc}
	}
	out, err := proto.Marshal(ri)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// maxOptionsSize bounds what start and -info read from stdin.
const maxOptionsSize = 10 << 20
