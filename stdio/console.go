package stdio

import (
	"fmt"
	"os"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/stdio/pump"
)

// A terminal's master is one descriptor, as in containerd's runc shim: the
// output pump reads it, the input pump writes it and Resize sets its size,
// none of them closes it; the IO closes it once, when the process's IO
// closes. (A duplicate per user would keep the pty alive in the shim, and
// count against it, after the process's IO is gone: containerd's CRI test
// TestContainerTTYLeakAfterExit counts the shim's /dev/ptmx descriptors.)

// receiveConsole takes the terminal master the runtime sent and starts
// moving its output to the client, and the client's stdin into it.
func (pio *IO) receiveConsole() error {
	defer func() {
		pio.socket.Close()
		pio.socket = nil
	}()
	con, err := pio.socket.ReceiveMaster()
	if err != nil {
		return fmt.Errorf("receive console master: %w", err)
	}
	master, err := pollableMaster(con)
	if err != nil {
		return err
	}
	return pio.startConsole(master)
}

// startConsole takes master as the terminal's and starts moving its output
// to the client, and the client's stdin into it.
func (pio *IO) startConsole(master *os.File) error {
	pio.mu.Lock()
	pio.master = master
	pio.mu.Unlock()
	if pio.consoleOut != nil {
		dst := pio.consoleOut
		pio.consoleOut = nil
		if err := pio.startOutput(master, dst, true); err != nil {
			return err
		}
	}
	if pio.stdin != nil {
		pio.startInput(master, true)
	}
	return nil
}

// pollableMaster turns the master the runtime sent into a file the poller
// waits on (console.Console's is blocking: its Fd() would make a nonblocking
// one blocking again, under the pumps), on one descriptor: the received one
// is closed.
func pollableMaster(con console.Console) (*os.File, error) {
	defer con.Close()
	fd, err := unix.FcntlInt(con.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("console master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("console master nonblock: %w", err)
	}
	return os.NewFile(uintptr(fd), "console-master"), nil
}

// Resize sets the terminal size; a process without a terminal has nothing
// to resize.
func (pio *IO) Resize(width, height uint32) error {
	if width > 0xffff || height > 0xffff {
		return fmt.Errorf("terminal size %dx%d out of range: %w", width, height, errdefs.ErrInvalidArgument)
	}
	pio.mu.Lock()
	defer pio.mu.Unlock() // Close takes the master under mu: it stays open here
	if pio.master == nil {
		return nil
	}
	raw, err := pio.master.SyscallConn()
	if err != nil {
		return fmt.Errorf("resize terminal: %w", err)
	}
	ws := &unix.Winsize{Col: uint16(width), Row: uint16(height)}
	if cerr := raw.Control(func(fd uintptr) { err = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws) }); cerr != nil {
		return fmt.Errorf("resize terminal: %w", cerr)
	}
	if err != nil {
		return fmt.Errorf("resize terminal: %w", err)
	}
	return nil
}

// closeMaster closes a terminal's master once the output pump through it
// has let it go: one still moving what the process wrote before it exited
// to a slow client does so in the background (pump.Finish).
func closeMaster(master *os.File, outputs []*pump.Pump) {
	for _, p := range outputs {
		select {
		case <-p.Done():
		default:
			go func() {
				for _, p := range outputs {
					<-p.Done()
				}
				master.Close()
			}()
			return
		}
	}
	master.Close()
}
