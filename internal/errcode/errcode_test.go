package errcode

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestKindsBecomeTheirCodes: each kind, however wrapped, is its code; a
// status passes through untouched.
func TestKindsBecomeTheirCodes(t *testing.T) {
	for err, want := range map[error]codes.Code{
		fmt.Errorf("a: %w", fmt.Errorf("b: %w", errdefs.ErrNotFound)): codes.NotFound,
		fmt.Errorf("x: %w", errdefs.ErrAlreadyExists):                 codes.AlreadyExists,
		fmt.Errorf("x: %w", errdefs.ErrFailedPrecondition):            codes.FailedPrecondition,
		fmt.Errorf("x: %w", errdefs.ErrInvalidArgument):               codes.InvalidArgument,
		fmt.Errorf("x: %w", errdefs.ErrNotImplemented):                codes.Unimplemented,
		fmt.Errorf("x: %w", errdefs.ErrPermissionDenied):              codes.PermissionDenied,
		fmt.Errorf("x: %w", errdefs.ErrUnavailable):                   codes.Unavailable,
		fmt.Errorf("x: %w", context.Canceled):                         codes.Canceled,
		fmt.Errorf("x: %w", context.DeadlineExceeded):                 codes.DeadlineExceeded,
		errors.New("something else"):                                  codes.Unknown,
		status.Error(codes.Aborted, "already a status"):               codes.Aborted,
	} {
		if got := status.Code(ToStatus(err)); got != want {
			t.Errorf("%v: code %v, want %v", err, got, want)
		}
	}
	if ToStatus(nil) != nil {
		t.Error("nil error became a status")
	}
}
