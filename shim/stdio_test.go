package shim

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
	pio, err := openIO(Stdio{Stdout: out, Stderr: errOut, Terminal: true}, ioConfig{})
	if err != nil {
		t.Fatalf("terminal with a stderr fifo: %v", err)
	}
	defer pio.close()
	if pio.consoleSocket() == nil {
		t.Fatal("a terminal process needs a console socket")
	}
	if pio.consoleOut == nil {
		t.Fatal("the stdout fifo was not opened")
	}
}
