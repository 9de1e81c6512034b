package stdio

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// exitedProcess opens an IO on a stdout fifo made at path, writes out as its
// process and exits; the output is then in the fifo, held by the shim's
// reader.
func exitedProcess(t *testing.T, path, out string) *IO {
	t.Helper()
	pio, err := Open(Paths{Stdout: path}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	procOut := pio.child[1]
	pio.child[1] = nil
	pio.Started()
	if _, err := procOut.WriteString(out); err != nil {
		t.Fatal(err)
	}
	procOut.Close()
	pio.Exited()
	return pio
}

// watchOpens reports every open of path from now on.
func watchOpens(t *testing.T, path string) <-chan struct{} {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	events := os.NewFile(uintptr(fd), "inotify")
	t.Cleanup(func() { events.Close() })
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_OPEN); err != nil {
		t.Fatal(err)
	}
	opened := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 4096)
		if _, err := events.Read(buf); err == nil {
			opened <- struct{}{}
		}
	}()
	return opened
}

// TestClientThatOpensLateGetsTheOutput: containerd's client opens its
// reader in a goroutine of its own and, for an exec, gives up on it once it
// has deleted the process. A client whose goroutine comes only after the
// process has exited and Delete has begun (a loaded node) still gets all
// of the output: the stdio waits for it before letting go of the fifo.
func TestClientThatOpensLateGetsTheOutput(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	pio := exitedProcess(t, path, "hello")
	opened := watchOpens(t, path)
	closed := make(chan error, 1)
	go func() { closed <- pio.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) with output in the fifo no client has read", err)
	case <-opened: // Close holds the fifo open for its client
	}
	// As containerd/fifo does it: a blocking open for reading.
	client, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	got, err := io.ReadAll(client) // EOF once the stdio lets go of the fifo
	if err != nil || string(got) != "hello" {
		t.Fatalf("late client read %q, %v", got, err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close after the client read everything: %v", err)
	}
}

// TestClientSeenIsNotWaitedFor: a client whose reader was open when the
// process started has its output in its own fifo whatever the shim does:
// Close lets go at once (a client that does not read never holds a Delete
// up), and the client still reads everything afterwards.
func TestClientSeenIsNotWaitedFor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	client, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	pio := exitedProcess(t, path, "hello")
	if err := pio.Close(); err != nil {
		t.Fatalf("Close with a client attached: %v", err)
	}
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "hello" {
		t.Fatalf("client read %q, %v", got, err)
	}
}
