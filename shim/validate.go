package shim

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// maxIDLength matches containerd's identifier limit.
const maxIDLength = 76

// ValidateID checks a container or exec id against containerd's identifier
// grammar: runs of ASCII letters and digits joined by single '.', '_' or '-'.
// That also keeps ids safe to use as path elements. what names the id.
func ValidateID(what, id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%s id must not be empty: %w", what, errdefs.ErrInvalidArgument)
	case len(id) > maxIDLength:
		return fmt.Errorf("%s id is %d bytes, longer than %d: %w", what, len(id), maxIDLength, errdefs.ErrInvalidArgument)
	case !wellFormedID(id):
		return fmt.Errorf("%s id %q must be letters and digits joined by single '.', '_' or '-': %w", what, id, errdefs.ErrInvalidArgument)
	}
	return nil
}

func wellFormedID(id string) bool {
	prevSep := true // an id may not start with a separator
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
			prevSep = false
		case c == '.' || c == '_' || c == '-':
			if prevSep {
				return false
			}
			prevSep = true
		default:
			return false
		}
	}
	return !prevSep
}
