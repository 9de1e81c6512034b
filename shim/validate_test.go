package shim

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestValidateID(t *testing.T) {
	good := []string{"a", "abc", "A-b_c.d", "x1", "1x", strings.Repeat("a", 76), "sandbox-0123abcd"}
	bad := []string{"", "-a", "a-", "a--b", "a/b", "..", ".", "a..b", "a b", "a\x00b", "ü", strings.Repeat("a", 77), "../etc", "a_"}
	for _, id := range good {
		if err := ValidateID("container", id); err != nil {
			t.Errorf("%q rejected: %v", id, err)
		}
	}
	for _, id := range bad {
		if err := ValidateID("container", id); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%q accepted (%v)", id, err)
		}
	}
}

// FuzzValidateID: an accepted id is always a single safe path element.
func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"a", "a.b", "../x", "a/b", "", "a-b_c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if ValidateID("x", id) != nil {
			return
		}
		if id == "" || len(id) > maxIDLength || strings.ContainsAny(id, "/\x00 ") || id == "." || id == ".." || strings.Contains(id, "..") {
			t.Fatalf("accepted unsafe id %q", id)
		}
	})
}
