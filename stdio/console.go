package stdio

import (
	"fmt"
	"os"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

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
	pio.mu.Lock()
	pio.console, pio.consoleFD = con, int(con.Fd())
	pio.mu.Unlock()
	if pio.consoleOut != nil {
		src, err := dupNonblock(con, "console-out")
		if err != nil {
			return err
		}
		dst := pio.consoleOut
		pio.consoleOut = nil
		if err := pio.startOutput(src, dst); err != nil {
			src.Close()
			return err
		}
	}
	if pio.stdin != nil {
		dst, err := dupNonblock(con, "console-in")
		if err != nil {
			return err
		}
		pio.startInput(dst)
	}
	return nil
}

// dupNonblock returns a pollable file on its own descriptor for the console
// master, so each pump owns (and closes) its own.
func dupNonblock(con console.Console, name string) (*os.File, error) {
	return dupFDNonblock(int(con.Fd()), name)
}

// dupFDNonblock duplicates fd into a pollable file of its own.
func dupFDNonblock(master int, name string) (*os.File, error) {
	fd, err := unix.FcntlInt(uintptr(master), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup console: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("console nonblock: %w", err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// Resize sets the terminal size; a process without a terminal has nothing
// to resize.
func (pio *IO) Resize(width, height uint32) error {
	if width > 0xffff || height > 0xffff {
		return fmt.Errorf("terminal size %dx%d out of range: %w", width, height, errdefs.ErrInvalidArgument)
	}
	pio.mu.Lock()
	con := pio.console
	pio.mu.Unlock()
	if con == nil {
		return nil
	}
	return con.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}
