//go:build !failpoint

package daemon

// failpoints injects failures into requests in a build for containerd's
// CRI integration suite's failpoint tests (tag failpoint, failpoint.go);
// this build injects none and links none of it.
type failpoints struct{}

func loadFailpoints() (failpoints, error) { return failpoints{}, nil }

func (failpoints) evaluate(string) error { return nil }
