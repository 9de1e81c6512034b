package main

import (
	"context"
	"errors"
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
	"golang.org/x/sys/unix"

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
	id := fs.String("id", "", "only the shim serving this container or holding this pod sandbox (with -namespace)")
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
		switch {
		case err == nil && ok:
			done++
		case errors.Is(err, errUnreachable) && *id != "":
			// Looking for one container's shim: one that cannot be asked
			// is not it (an unrelated stale one); if none is, that is said below.
			fmt.Fprintf(stdout, "pid=%d socket=%s skipped: %v\n", found.Pid, found.Socket, err)
		case err != nil:
			fmt.Fprintf(stdout, "pid=%d socket=%s result=failed: %v\n", found.Pid, found.Socket, err)
			failed++
		}
	}
	switch {
	case failed > 0:
		return fmt.Errorf("%d of %d shims could not be upgraded", failed, failed+done)
	case *id != "" && done == 0:
		return fmt.Errorf("no tether shim serves container %s/%s", *ns, *id)
	case *ns != "" && done == 0:
		return fmt.Errorf("no tether shim serves namespace %s", *ns)
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
		return false, fmt.Errorf("%w: %w", errUnreachable, err)
	}
	// The socket must be root's, as a shim's is: a process that only looks
	// like a shim gets nothing asked of it.
	if err := checkPeer(conn.(*net.UnixConn)); err != nil {
		conn.Close()
		return false, fmt.Errorf("%w: %w", errUnreachable, err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	admin := upgradepb.NewAdminClient(client)
	ictx, icancel := context.WithTimeout(context.Background(), 5*time.Second)
	info, err := admin.Info(ictx, &upgradepb.InfoRequest{})
	icancel()
	if err != nil {
		return false, fmt.Errorf("%w: %w", errUnreachable, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), upgradeTimeout)
	defer cancel()
	if (ns != "" && info.GetNamespace() != ns) || (id != "" && !slices.Contains(info.GetContainers(), id) && info.GetSandbox() != id) {
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

// errUnreachable is a shim that could not be asked anything.
var errUnreachable = errors.New("cannot ask the shim")

// checkPeer checks that the socket behind conn was set up by root (a
// socket's credentials are those of whoever listened on it: for a shim, its
// start action).
func checkPeer(conn *net.UnixConn) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var credErr error
	raw.Control(func(fd uintptr) { cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	switch {
	case credErr != nil:
		return credErr
	case cred.Uid != 0:
		return fmt.Errorf("the socket is served by uid %d, not root", cred.Uid)
	}
	return nil
}

// newToken names one upgrade (unique, not secret: no crypto in the shim).
func newToken() string {
	return fmt.Sprintf("%d-%016x", os.Getpid(), rand.Uint64())
}
