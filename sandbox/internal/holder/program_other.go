//go:build !amd64 && !arm64

package holder

import (
	"fmt"
	"runtime"

	"github.com/containerd/errdefs"
)

// programCode: the holder program is written for amd64 and arm64 only.
func programCode() ([]byte, uint16, error) {
	return nil, 0, fmt.Errorf("a pod holder on %s (a pod whose containers share its pid namespace; use a handler without sandboxer = \"shim\"): %w", runtime.GOARCH, errdefs.ErrNotImplemented)
}
