package stdio

import (
	"bytes"
	"os"
	"testing"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/pipetest"
)

// terminalIO opens a terminal's IO on the client's fifo at path and gives
// it a terminal master, as the runtime's console socket would; it returns
// the slave, the process's end.
func terminalIO(t *testing.T, path string) (*IO, *os.File) {
	t.Helper()
	pio, err := Open(Paths{Stdout: path, Terminal: true}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	master, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	pio.socket.Close()
	pio.socket = nil
	pollable, err := pollableMaster(master)
	if err != nil {
		t.Fatal(err)
	}
	if err := pio.startConsole(pollable); err != nil {
		t.Fatal(err)
	}
	return pio, slave
}

// TestCloseLeavesTheTailToAClientThatReadsLate: a terminal's process wrote
// more than its client's fifo holds and exited while the client was not
// reading (on a loaded node: the exit is reported once DrainTimeout has
// passed), then its exec was deleted, before the client read on. Close
// stopped the pump and the end of what the process wrote before it exited
// was lost; now the pump goes on moving that to the client, and stops only
// what would come after.
func TestCloseLeavesTheTailToAClientThatReadsLate(t *testing.T) {
	path := clientFifoPath(t)
	client, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	// A small fifo: what the pump writes to it in pieces that are not
	// whole pages fills a page each, so a full-size fifo may hold less
	// than the terminal is asked to take below, and the process's write
	// would block the test. The terminal holds 64 KiB by itself.
	const fifoSize = 16 << 10
	if _, err := unix.FcntlInt(client.Fd(), unix.F_SETPIPE_SZ, fifoSize); err != nil {
		t.Fatal(err)
	}
	pio, slave := terminalIO(t, path)
	// A little more than the fifo holds (no newline: the terminal passes it
	// as it is): the rest waits in the pump and the terminal.
	written := bytes.Repeat([]byte("0123456789abcdef"), (fifoSize+2<<10)/16)
	if _, err := slave.Write(written); err != nil {
		t.Fatal(err)
	}
	slave.Close() // the process exits
	pio.mu.Lock()
	outputs := pio.outputs
	pio.mu.Unlock()
	for _, p := range outputs {
		p.Exited() // as IO.Exited does, without waiting DrainTimeout for a client that does not read
	}
	if err := pio.AwaitClients(); err == nil {
		t.Fatal("the output of a process whose client does not read was taken")
	}
	pio.Close() // the exec's Delete
	unix.SetNonblock(int(client.Fd()), false)
	if got := pipetest.ReadAll(t, client, "the client's fifo"); !bytes.Equal(got, written) {
		t.Fatalf("the client read %d bytes of the %d the process wrote before it exited", len(got), len(written))
	}
}
