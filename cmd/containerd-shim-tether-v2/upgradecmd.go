package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/containerd/ttrpc"

	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/upgrade"
)

// upgradeTimeout bounds one shim's upgrade, from the request to the answer
// of the process that carries on.
const upgradeTimeout = time.Minute

// runUpgrade is the upgrade action: every serving tether shim on the host
// (or those of -namespace, or the one serving -namespace/-id) re-executes a
// new binary in place —
// the one now installed where it was started from, or -binary. One line per
// shim; non-zero if any could not be upgraded (it carries on, on its old
// binary).
func runUpgrade(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("upgrade", flag.ContinueOnError)
	ns := fs.String("namespace", "", "only the shims of this namespace")
	id := fs.String("id", "", "only the shim serving this container (with -namespace)")
	binary := fs.String("binary", "", "the binary to upgrade to (default: the path each shim was started from)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *id != "" && *ns == "" {
		return fmt.Errorf("-id needs -namespace")
	}
	if *binary != "" {
		abs, err := filepath.Abs(*binary)
		if err != nil {
			return err
		}
		*binary = abs
	}
	shims, err := upgrade.FindShims()
	if err != nil {
		return fmt.Errorf("find shims: %w", err)
	}
	failed, done := 0, 0
	for _, found := range shims {
		if *ns != "" && found.Namespace != *ns {
			continue
		}
		ok, err := upgradeOne(found, *ns, *id, *binary, stdout)
		if err != nil {
			fmt.Fprintf(stdout, "pid=%d socket=%s result=failed: %v\n", found.Pid, found.Socket, err)
			failed++
			continue
		}
		if ok {
			done++
		}
	}
	switch {
	case failed > 0:
		return fmt.Errorf("%d of %d shims could not be upgraded", failed, failed+done)
	case *id != "" && done == 0:
		return fmt.Errorf("no tether shim serves container %s/%s", *ns, *id)
	case done == 0:
		fmt.Fprintln(stdout, "no tether shim to upgrade")
	}
	return nil
}

// upgradeOne upgrades the shim found, unless it does not serve ns/id
// (when given); ok says it was asked.
func upgradeOne(found upgrade.Found, ns, id, binary string, stdout io.Writer) (ok bool, err error) {
	conn, err := net.DialTimeout("unix", found.Socket, 5*time.Second)
	if err != nil {
		return false, err
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	admin := upgradepb.NewAdminClient(client)
	ctx, cancel := context.WithTimeout(context.Background(), upgradeTimeout)
	defer cancel()
	info, err := admin.Info(ctx, &upgradepb.InfoRequest{})
	if err != nil {
		return false, fmt.Errorf("ask the shim: %w", err)
	}
	if (ns != "" && info.GetNamespace() != ns) || (id != "" && !slices.Contains(info.GetContainers(), id)) {
		return false, nil
	}
	resp, err := admin.Upgrade(ctx, &upgradepb.UpgradeRequest{Binary: binary, Token: newToken()})
	if err != nil {
		return true, err
	}
	result := "ok"
	if resp.GetError() != "" {
		result = "failed: " + resp.GetError()
	}
	fmt.Fprintf(stdout, "pid=%d old=%s new=%s pause=%s binary=%s result=%s\n", resp.GetPid(), resp.GetOldVersion(),
		resp.GetNewVersion(), time.Duration(resp.GetPauseNs()).Round(10*time.Microsecond), resp.GetBinary(), result)
	if resp.GetError() != "" {
		return true, fmt.Errorf("%s", resp.GetError())
	}
	return true, nil
}

// newToken names one upgrade (unique, not secret: no crypto in the shim).
func newToken() string {
	return fmt.Sprintf("%d-%016x", os.Getpid(), rand.Uint64())
}
