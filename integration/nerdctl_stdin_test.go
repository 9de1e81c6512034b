package integration

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"math/rand/v2"
	"testing"

	"github.com/tether-shim/tether/integration/harness"
)

// TestNerdctlStdinReadLate: 64 KiB through `nerdctl run -i` and `nerdctl
// exec -i` to a process that reads only after the client has written it
// all and gone (issue 22): it gets every byte and then EOF. tether used to
// hang there for good: the pump saw EAGAIN from a pipe-to-pipe splice whose
// source had hung up, and waited for a readable fifo that never came.
func TestNerdctlStdinReadLate(t *testing.T) {
	data := make([]byte, 64<<10)
	rng := rand.NewChaCha8([32]byte{22})
	rng.Read(data)
	sum := md5.Sum(data)
	want := hex.EncodeToString(sum[:]) + "  -\n"
	forEachRuntime(t, func(t *testing.T, n *nerdctlEnv) {
		res := n.must(bytes.NewReader(data), n.runArgs("-i", "--rm", harness.BusyboxImageName, "sh", "-c", "sleep 1; md5sum")...)
		if res.Stdout != want {
			t.Errorf("run -i: md5sum printed %q, want %q (stderr %q)", res.Stdout, want, res.Stderr)
		}
		n.must(nil, n.runArgs("-d", "--name", "stdin-exec", harness.BusyboxImageName, "sleep", "100000")...)
		res = n.must(bytes.NewReader(data), "exec", "-i", "stdin-exec", "sh", "-c", "sleep 1; md5sum")
		if res.Stdout != want {
			t.Errorf("exec -i: md5sum printed %q, want %q (stderr %q)", res.Stdout, want, res.Stderr)
		}
		// A reader that is there from the start, and stdin larger than a pipe.
		big := bytes.Repeat(data, 16)
		bigSum := md5.Sum(big)
		res = n.must(bytes.NewReader(big), "exec", "-i", "stdin-exec", "md5sum")
		if want := hex.EncodeToString(bigSum[:]) + "  -\n"; res.Stdout != want {
			t.Errorf("exec -i (1 MiB, read at once): md5sum printed %q, want %q", res.Stdout, want)
		}
	})
}
