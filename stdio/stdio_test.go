package stdio

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestTerminalWithStderrFifo: containerd's Go client sends a stderr fifo
// along with terminal=true when it was given all three streams
// (cio.WithTerminal); containerd's runc shim ignores it, and so does tether
// (containerd's TestContainerPTY). Only stdout is opened.
func TestTerminalWithStderrFifo(t *testing.T) {
	dir := t.TempDir()
	out, errOut := filepath.Join(dir, "out"), filepath.Join(dir, "err")
	for _, p := range []string{out, errOut} {
		if err := unix.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pio, err := Open(Paths{Stdout: out, Stderr: errOut, Terminal: true}, Config{})
	if err != nil {
		t.Fatalf("terminal with a stderr fifo: %v", err)
	}
	defer pio.Close()
	if pio.ConsoleSocket() == nil {
		t.Fatal("a terminal process needs a console socket")
	}
	if pio.consoleOut == nil {
		t.Fatal("the stdout fifo was not opened")
	}
}
