package oci

import (
	"errors"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/anypb"
)

// FuzzParseOptions: any bytes under any options type decode or fail with
// InvalidArgument, never panic.
func FuzzParseOptions(f *testing.F) {
	f.Add(uint8(0), []byte{0x32, 0x04, 'c', 'r', 'u', 'n'})
	f.Add(uint8(1), []byte{0x1a, 0x0f, 'B', 'i', 'n', 'a', 'r', 'y', 'N', 'a', 'm', 'e', ' ', '=', ' ', '"', 'x'})
	f.Add(uint8(2), []byte{0x08, 0x01, 0x4a, 0x02, '/', 's'})
	urls := []string{"containerd.runc.v1.Options", "runtimeoptions.v1.Options", "containerd.linux.runc.CreateOptions"}
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		url := urls[int(kind)%len(urls)]
		if _, err := ParseOptions(&anypb.Any{TypeUrl: url, Value: data}); err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("error without InvalidArgument: %v", err)
		}
	})
}
