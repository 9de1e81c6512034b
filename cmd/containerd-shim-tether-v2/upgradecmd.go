package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/tether-shim/tether/upgrade/fleet"
)

// upgradeUsage explains the upgrade action, above its flags in -h.
const upgradeUsage = `usage: containerd-shim-tether-v2 upgrade [-address SOCKET] [-namespace NS [-id ID]] [-binary PATH]

Moves running tether shims onto a new binary in place (a live upgrade):
each re-executes the binary now installed where it was started from, or
-binary, keeping its containers, their output and containerd's connections.
One line per shim; the exit status is not 0 if any shim in scope could not
move (it carries on, on its old binary).

Without -address, -namespace or -id it moves EVERY tether shim of this
host: those of every containerd running here (Docker's beside Kubernetes',
a test daemon's), in every namespace. A shim is a process that runs this
same program (read from its executable, whatever its command line says) in
this command's root directory: shims of a containerd running in another
root (in a container) are moved by running this command there.

`

// runUpgrade is the upgrade action: every serving tether shim in scope
// re-executes a new binary in place.
func runUpgrade(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("upgrade", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), upgradeUsage)
		fs.PrintDefaults()
	}
	var scope fleet.Scope
	fs.StringVar(&scope.Address, "address", "", "only the shims of the containerd listening on this socket (the -address it started them with)")
	fs.StringVar(&scope.Namespace, "namespace", "", "only the shims of this containerd namespace")
	fs.StringVar(&scope.ID, "id", "", "only the shim serving this container or holding this pod sandbox (with -namespace)")
	binary := fs.String("binary", "", "the binary to upgrade to (default: the path each shim was started from)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if scope.ID != "" && scope.Namespace == "" {
		return fmt.Errorf("-id needs -namespace")
	}
	for _, path := range []*string{binary, &scope.Address} {
		if *path != "" {
			abs, err := filepath.Abs(*path)
			if err != nil {
				return err
			}
			*path = abs
		}
	}
	shims, err := fleet.Find()
	if err != nil {
		return fmt.Errorf("find shims: %w", err)
	}
	failed, done := 0, 0
	fleet.Upgrade(shims, scope, *binary, fleet.DefaultBounds(), func(r fleet.Result) {
		s := r.Shim
		switch {
		case errors.Is(r.Err, fleet.ErrUnreachable) && scope.ID != "":
			// Looking for one container's shim: one that cannot be asked
			// is not it (an unrelated stale one); if none is, that is said below.
			fmt.Fprintf(stdout, "pid=%d socket=%s skipped: %v\n", s.Pid, s.Socket, r.Err)
		case r.Response != nil:
			resp, result := r.Response, "ok"
			if r.Err != nil {
				result = "failed: " + r.Err.Error()
			}
			fmt.Fprintf(stdout, "pid=%d old=%s new=%s pause=%s binary=%s result=%s\n", resp.GetPid(), resp.GetOldVersion(),
				resp.GetNewVersion(), time.Duration(resp.GetPauseNs()).Round(10*time.Microsecond), resp.GetBinary(), result)
		default:
			fmt.Fprintf(stdout, "pid=%d socket=%s result=failed: %v\n", s.Pid, s.Socket, r.Err)
		}
		if r.Err != nil {
			if !errors.Is(r.Err, fleet.ErrUnreachable) || scope.ID == "" {
				failed++
			}
			return
		}
		done++
	})
	switch {
	case failed > 0:
		return fmt.Errorf("%d of %d shims could not be upgraded", failed, failed+done)
	case scope.ID != "" && done == 0:
		return fmt.Errorf("no tether shim serves container %s/%s", scope.Namespace, scope.ID)
	case scope.Namespace != "" && done == 0:
		return fmt.Errorf("no tether shim serves namespace %s%s", scope.Namespace, ofContainerd(scope.Address))
	case done == 0:
		// A containerd running no tether container is no failure (a
		// package's upgrade on a node that runs none).
		fmt.Fprintf(stdout, "no tether shim to upgrade%s\n", ofContainerd(scope.Address))
	}
	return nil
}

// ofContainerd names the containerd of -address, if any.
func ofContainerd(address string) string {
	if address == "" {
		return ""
	}
	return " of the containerd at " + address
}
