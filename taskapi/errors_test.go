package taskapi

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestErrorsBecomeTheirCodes: each kind of error, however wrapped, reaches
// containerd as its code; a cgroup that is gone is NotFound, not Unknown.
func TestErrorsBecomeTheirCodes(t *testing.T) {
	for err, want := range map[error]codes.Code{
		fmt.Errorf("cgroup stats of /sys/fs/cgroup/x: stat: no such file: %w", errdefs.ErrNotFound): codes.NotFound,
		fmt.Errorf("a: %w", fmt.Errorf("b: %w", errdefs.ErrFailedPrecondition)):                     codes.FailedPrecondition,
		fmt.Errorf("x: %w", errdefs.ErrInvalidArgument):                                             codes.InvalidArgument,
		fmt.Errorf("x: %w", errdefs.ErrAlreadyExists):                                               codes.AlreadyExists,
		fmt.Errorf("x: %w", errdefs.ErrNotImplemented):                                              codes.Unimplemented,
		fmt.Errorf("x: %w", errdefs.ErrPermissionDenied):                                            codes.PermissionDenied,
		fmt.Errorf("runc kill: did not finish: %w", context.DeadlineExceeded):                       codes.DeadlineExceeded,
		errors.New("something else"):                                                                codes.Unknown,
	} {
		if got := status.Code(toStatus(err)); got != want {
			t.Errorf("%v: code %v, want %v", err, got, want)
		}
	}
	if toStatus(nil) != nil {
		t.Error("nil error became a status")
	}
}
