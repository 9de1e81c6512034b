package shim

import (
	"context"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/shim/internal/lifecycle"
)

// Checkpoint dumps the running (or paused) container with CRIU into path,
// leaving it running unless the options ask it to exit. With exit, the
// init's TaskExit follows TaskCheckpointed: its stop waits for this
// transition.
func (c *Container) Checkpoint(ctx context.Context, path string, opts *anypb.Any) error {
	return lifecycle.NewInit(c.life).Checkpoint(ctx, c.init, path, opts)
}
