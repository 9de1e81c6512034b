package taskapi

import "github.com/tether-shim/tether/internal/errcode"

// toStatus turns an error into the ttrpc status containerd decodes. The task
// core wraps containerd's errdefs kinds with context; the service's methods
// are the one place they become codes.
func toStatus(err error) error { return errcode.ToStatus(err) }
