package shim

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/proto/types"
)

func TestParseMount(t *testing.T) {
	cases := []struct {
		m                 *types.Mount
		flags, propagated uintptr
		data              string
	}{
		{&types.Mount{Type: "overlay", Source: "overlay", Options: []string{"index=off", "lowerdir=/l1:/l2", "upperdir=/u", "workdir=/w"}},
			0, 0, "index=off,lowerdir=/l1:/l2,upperdir=/u,workdir=/w"},
		{&types.Mount{Type: "bind", Source: "/src", Options: []string{"rbind", "ro"}},
			unix.MS_BIND | unix.MS_REC | unix.MS_RDONLY, 0, ""},
		{&types.Mount{Type: "bind", Source: "/src", Options: []string{"ro", "rw", "nosuid", "rprivate"}},
			unix.MS_BIND | unix.MS_NOSUID, unix.MS_PRIVATE | unix.MS_REC, ""},
		{&types.Mount{Type: "tmpfs", Source: "tmpfs", Options: []string{"nodev", "size=64m", "mode=755"}},
			unix.MS_NODEV, 0, "size=64m,mode=755"},
	}
	for _, c := range cases {
		pm, err := parseMount(c.m)
		if err != nil {
			t.Errorf("%v: %v", c.m.Options, err)
			continue
		}
		if pm.flags != c.flags || pm.propagation != c.propagated || pm.data != c.data {
			t.Errorf("%v: flags %#x prop %#x data %q; want %#x %#x %q", c.m.Options, pm.flags, pm.propagation, pm.data, c.flags, c.propagated, c.data)
		}
	}
	for _, m := range []*types.Mount{
		{Type: "", Source: "x"},
		{Type: "ext4", Source: "/img", Options: []string{"loop"}},
		{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + strings.Repeat("/x", 3000)}},
	} {
		if _, err := parseMount(m); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%v accepted (%v)", m.Options, err)
		}
	}
}
