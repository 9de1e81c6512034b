package mount

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/proto/types"
)

// FuzzParseMount: arbitrary mounts parse or fail with InvalidArgument.
func FuzzParseMount(f *testing.F) {
	f.Add("overlay", "overlay", "lowerdir=/a:/b,upperdir=/u,workdir=/w")
	f.Add("bind", "/src", "rbind,ro,rprivate")
	f.Add("overlay", "overlay", "lowerdir=/s/1/fs:/s/2/fs,upperdir=/s/3/fs,workdir=/s/3/work,uidmap=0:100000:65536,gidmap=0:100000:65536")
	f.Fuzz(func(t *testing.T, typ, source, options string) {
		opts := strings.Split(options, ",")
		if _, err := parse(&types.Mount{Type: typ, Source: source, Options: opts}); err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("error without InvalidArgument: %v", err)
		}
	})
}
