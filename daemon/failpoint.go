//go:build failpoint

package daemon

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/tether-shim/tether/internal/failpoint"
)

// failpoints are the failures this shim injects into requests: a build for
// containerd's CRI integration suite's failpoint tests, tether's
// counterpart of containerd's failpoint shim (containerd-shim-runc-fp-v1),
// configured as the suite's handler runc-fp.
type failpoints struct{ set *failpoint.Set }

// loadFailpoints reads them, as containerd's failpoint shim does, from the
// annotations of the bundle the shim starts in (its first container's: a
// pod's sandbox).
func loadFailpoints() (failpoints, error) {
	data, err := os.ReadFile("config.json")
	if err != nil {
		return failpoints{}, fmt.Errorf("failpoints: %w", err)
	}
	var spec struct{ Annotations map[string]string }
	if err := json.Unmarshal(data, &spec); err != nil {
		return failpoints{}, fmt.Errorf("failpoints: config.json: %w", err)
	}
	set, err := failpoint.FromAnnotations(spec.Annotations)
	return failpoints{set}, err
}

// evaluate applies the next failpoint of a task API method (the last part
// of a ttrpc method's name).
func (f failpoints) evaluate(method string) error { return f.set.Evaluate(method) }
