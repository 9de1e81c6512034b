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
	"github.com/tether-shim/tether/manager"
	"github.com/tether-shim/tether/shim"
	"github.com/tether-shim/tether/taskapi"
	"github.com/tether-shim/tether/upgrade"
)

// Restore carries on from the process that wrote its state into
// o.RestoreFD and re-executed this binary (a live upgrade), or that rolled
// back to it (o.Rollback says why). The shim is taken back step by step
// (upgrade.TakeBack): a step that fails rolls back to the old binary, with
// the same containers and connections, as long as nothing has been
// started; once every part is taken back the descriptors received are
// closed, and only then do the parts start: stdio and OOM watches, events,
// the exits kept meanwhile, serving.
func Restore(o Options) error {
	begun := time.Now()
	d := newDaemon(o)             // fd 2 is the log fifo already: it survived the exec
	baseline := carriedBaseline() // before anything is started that would inherit it
	tb, err := upgrade.BeginTakeBack(d.identity(), o.RestoreFD, o.OldBinaryFD, o.Rollback, d.log)
	if err != nil {
		return err
	}
	st := tb.State
	sh := st.GetShim()
	d.startReaper()
	d.binary = sh.GetBinary()
	d.socket = socketFile{path: sh.GetSocketPath(), dev: sh.GetSocketDev(), ino: sh.GetSocketIno(),
		alias: manager.SocketAliasOf(o.Address, o.Namespace, o.ID)}
	d.ttrpcAddress = sh.GetTtrpcAddress()
	// Nothing is sent before the take-back is complete: the undelivered
	// events go first, in order, once it is.
	tb.Step("events", func() error {
		d.publisher = events.New(d.eventsConfig())
		d.publisher.Pause(context.Background()) // no sender yet: returns at once
		return d.publisher.Requeue(st.GetEvents())
	})
	if d.publisher == nil {
		d.publisher = events.New(d.eventsConfig())
		d.publisher.Pause(context.Background())
	}
	// The pod's holder and the containers' processes are owned again
	// before the kept exits are delivered and before anything is reaped.
	tb.Step("sandbox", func() (err error) {
		d.pod, err = d.podService(st.GetSandbox())
		return err
	})
	if d.pod == nil {
		d.pod, _ = d.podService(nil)
	}
	d.containers = shim.RestoreTable(d.taskEnv(), sh.GetClosing())
	for _, c := range st.GetContainers() {
		tb.Step("container", func() error { return d.containers.Restore(c) })
	}
	d.svc = taskapi.New(d.taskAPIConfig())
	var raw *net.UnixListener
	tb.Step("listener", func() error {
		fd, err := fdpass.Take(int(sh.GetListenerFd()))
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), "socket")
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("take back the listening socket: %w", err)
		}
		raw = l.(*net.UnixListener)
		return nil
	})
	var conns []handover.State
	for _, c := range st.GetConns() {
		conns = append(conns, handover.State{FD: int(c.GetFd()), Carried: c.GetCarried(), Pending: c.GetPending()})
	}
	tb.Step("connections", func() error { return d.listen(raw, conns) })
	if d.ttrpc == nil {
		d.listen(raw, nil)
	}
	tb.Commit()

	d.containers.TakeBack()
	d.publisher.Resume()
	d.reaper.Deliver(tb.Exits()) // after every process has its owner again
	d.completed, d.completedFor = tb.Answer(o.Version)
	if o.Rollback != "" {
		d.binary = d.completed.GetBinary()
	}
	pause := time.Duration(d.completed.GetPauseNs())
	if d.completedFor == "" { // a start over (startover.go) has no request to answer
		d.completed = nil
	}
	d.serveAdmin()
	if d.startOver != nil {
		d.startOver.Carried(time.Now(), baseline)
		d.idle.quietSoon()
	}
	d.log.Info("carrying on after a live upgrade", "from", st.GetHandover().GetOldVersion(),
		"pause", pause, "take_back", time.Since(begun), "rolled_back", o.Rollback != "", "lost", tb.Lost())
	return d.run()
}
