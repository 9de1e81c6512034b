package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/tether-shim/tether/events"
	"github.com/tether-shim/tether/handover"
	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim"
	"github.com/tether-shim/tether/taskapi"
	"github.com/tether-shim/tether/upgrade"
)

// Restore carries on from the process that wrote its state into
// o.RestoreFD and re-executed this binary (a live upgrade), or that rolled
// back to it (o.Rollback says why). Until the state is read and checked, a
// failure rolls back to the old binary; from then on the shim takes back
// what it can and serves.
func Restore(o Options) error {
	d := newDaemon(o) // fd 2 is the log fifo already: it survived the exec
	stateFD, rollback := o.RestoreFD, o.Rollback
	st, err := upgrade.LoadState(stateFD)
	if err != nil {
		d.log.Error("cannot take the shim over", "error", err)
		upgrade.RollBack(d.identity(), o.OldBinaryFD, stateFD, rollback, err, d.log)
		return err // only if the rollback could not run
	}
	d.startReaper()
	sh, ho := st.GetShim(), st.GetHandover()
	d.binary = sh.GetBinary()
	d.socket = socketFile{path: sh.GetSocketPath(), dev: sh.GetSocketDev(), ino: sh.GetSocketIno()}
	d.ttrpcAddress = sh.GetTtrpcAddress()
	d.publisher = events.New(d.eventsConfig())
	// The undelivered events go first, in order; the sender (which may
	// start a publish binary) waits until the descriptors taken back below
	// are close-on-exec again.
	d.publisher.Pause(context.Background()) // no sender yet: returns at once
	if err := d.publisher.Requeue(st.GetEvents()); err != nil {
		d.log.Error("take back undelivered events", "error", err)
	}
	// The pod's holder and the containers' processes are owned again
	// before the kept exits are delivered and before anything is reaped.
	d.pod = d.podService(st.GetSandbox())
	d.containers = shim.RestoreTable(d.taskEnv(), st.GetContainers(), sh.GetClosing())
	d.publisher.Resume()
	d.svc = taskapi.New(d.taskAPIConfig())
	var held []reaper.Exit
	for _, e := range st.GetExits() {
		held = append(held, reaper.Exit{Pid: int(e.GetPid()), Status: int(e.GetStatus()), Time: time.Unix(0, e.GetTimeNs())})
	}
	d.reaper.Deliver(held) // after every process has its owner again
	var conns []handover.State
	for _, c := range st.GetConns() {
		conns = append(conns, handover.State{FD: int(c.GetFd()), Carried: c.GetCarried(), Pending: c.GetPending()})
	}
	lf := os.NewFile(uintptr(sh.GetListenerFd()), "socket")
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return fmt.Errorf("take back the listening socket: %w", err)
	}
	if err := d.listen(l.(*net.UnixListener), conns); err != nil {
		return err
	}
	resp := &upgradepb.UpgradeResponse{
		Pid: uint32(os.Getpid()), OldVersion: ho.GetOldVersion(), NewVersion: o.Version, Binary: d.binary,
		PauseNs: upgrade.Monotonic() - ho.GetFrozenAtNs(), Error: rollback,
	}
	if rollback != "" {
		resp.NewVersion, resp.Binary, d.binary = ho.GetOldVersion(), ho.GetOldBinary(), ho.GetOldBinary()
	}
	d.completed, d.completedFor = resp, ho.GetToken()
	d.serveAdmin()
	fdpass.Close(stateFD, o.OldBinaryFD)
	d.log.Info("carrying on after a live upgrade", "from", ho.GetOldVersion(), "pause", time.Duration(resp.PauseNs), "rolled_back", rollback != "")
	return d.run()
}
