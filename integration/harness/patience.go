package harness

import (
	"os"
	"strconv"
	"time"
)

// TimeoutScaleEnv stretches the suite's hang guards (ctr's minute, the
// waits for a condition, containerd's start): a VM under TCG on a loaded
// machine runs the same steps ten times slower or more. An integer; 1 if
// unset.
const TimeoutScaleEnv = "TETHER_TIMEOUT_SCALE"

// Patience is d stretched by TimeoutScaleEnv. It bounds waits for what must
// happen (hang guards), never how fast something must be.
func Patience(d time.Duration) time.Duration {
	if n, err := strconv.Atoi(os.Getenv(TimeoutScaleEnv)); err == nil && n > 1 {
		return d * time.Duration(n)
	}
	return d
}
