package stdio

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// clientFifoPath makes a client's output fifo.
func clientFifoPath(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "out")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

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

// exitedWithALingeringWriter is exitedProcess with another process still
// holding the process's stdout: it returns that writer, for the caller to
// write more and close.
func exitedWithALingeringWriter(t *testing.T, path, out string) (*IO, int) {
	t.Helper()
	pio, err := Open(Paths{Stdout: path}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	procOut := pio.child[1]
	pio.child[1] = nil
	pio.Started()
	lingering, err := unix.Dup(int(procOut.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	procOut.WriteString(out)
	procOut.Close()
	pio.Exited() // drained: the output is in the fifo, the pump goes on
	return pio, lingering
}

// openLate opens path for reading as containerd/fifo does (blocking, in a
// goroutine of its own); it fails the test if the open does not return.
func openLate(t *testing.T, path string) *os.File {
	t.Helper()
	opened := make(chan *os.File, 1)
	go func() {
		f, err := os.OpenFile(path, os.O_RDONLY, 0)
		if err != nil {
			t.Error(err)
		}
		opened <- f
	}()
	select {
	case f := <-opened:
		if f == nil {
			t.FailNow()
		}
		t.Cleanup(func() { f.Close() })
		return f
	case <-time.After(time.Minute):
		// Unblock the open for the goroutine's sake, then fail.
		if w, err := os.OpenFile(path, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
		t.Fatal("a late client's open never returned: no writer was left for it")
		return nil
	}
}

// TestClientThatOpensLateGetsTheOutput: containerd's clients open their
// reader in a goroutine of their own. One that comes only after the
// process has exited and its pump has closed its writer (a loaded node)
// still gets all of the output and then EOF, without a Delete first (CRI's
// ExecSync reads to EOF before it deletes).
func TestClientThatOpensLateGetsTheOutput(t *testing.T) {
	path := clientFifoPath(t)
	pio := exitedProcess(t, path, "hello")
	defer pio.Close()
	client := openLate(t, path)
	got, err := io.ReadAll(client) // EOF once the stdio lets go of the fifo
	if err != nil || string(got) != "hello" {
		t.Fatalf("late client read %q, %v", got, err)
	}
	if err := pio.AwaitClients(); err != nil {
		t.Fatalf("await the client that read everything: %v", err)
	}
}

// TestLateClientOfASilentProcessGetsEOF: ctr 2.x's exec and CRI's
// ExecSync read to EOF before they delete; a late client of a process that
// wrote nothing must get its EOF, not block in open for ever.
func TestLateClientOfASilentProcessGetsEOF(t *testing.T) {
	path := clientFifoPath(t)
	pio := exitedProcess(t, path, "")
	defer pio.Close()
	got, err := io.ReadAll(openLate(t, path))
	if err != nil || len(got) != 0 {
		t.Fatalf("late client of a silent process read %q, %v", got, err)
	}
	if err := pio.AwaitClients(); err != nil {
		t.Fatalf("await the client: %v", err)
	}
}

// TestAttachedClientIsNotHeldFor: a client that opened after the shim (not
// seen then) but before the exit is attached: nothing holds its EOF back
// (a hold looking for it finds it at once).
func TestAttachedClientIsNotHeldFor(t *testing.T) {
	path := clientFifoPath(t)
	pio, err := Open(Paths{Stdout: path}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer pio.Close()
	client, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	pio.Started()
	pio.Exited() // the process wrote nothing
	f := pio.fifos[0]
	f.mu.Lock()
	hold := f.hold
	f.mu.Unlock()
	if hold != nil {
		<-hold.done // ends by itself, the client there
		if hold.err != nil {
			t.Fatalf("hold of an attached client's fifo: %v", hold.err)
		}
	}
	if got, err := io.ReadAll(client); err != nil || len(got) != 0 {
		t.Fatalf("attached client read %q, %v", got, err)
	}
}

// TestExecDeleteAwaitsALateClient: ctr gives up on its reader only after it
// has deleted the exec: AwaitClients, which the exec's Delete calls, returns
// once the late client has read the output, not before.
func TestExecDeleteAwaitsALateClient(t *testing.T) {
	path := clientFifoPath(t)
	pio := exitedProcess(t, path, "hello")
	defer pio.Close()
	awaited := make(chan error, 1)
	go func() { awaited <- pio.AwaitClients() }()
	client := openLate(t, path)
	select {
	case err := <-awaited:
		t.Fatalf("AwaitClients returned (%v) before the client read", err)
	default:
	}
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "hello" {
		t.Fatalf("late client read %q, %v", got, err)
	}
	if err := <-awaited; err != nil {
		t.Fatalf("AwaitClients after the client read everything: %v", err)
	}
}

// TestCloseLetsGoOfAHeldFifo: an init's client has given up before the
// Delete: Close does not wait for it, and holds the fifo no more (no
// reader or writer of the shim's is left on it).
func TestCloseLetsGoOfAHeldFifo(t *testing.T) {
	path := clientFifoPath(t)
	pio := exitedProcess(t, path, "hello")
	pio.Close()
	if w, err := os.OpenFile(path, os.O_WRONLY|unix.O_NONBLOCK, 0); !errors.Is(err, unix.ENXIO) {
		w.Close()
		t.Fatalf("the shim still reads the fifo after Close: open for writing: %v", err)
	}
	r, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if w, err := os.OpenFile(path, os.O_WRONLY|unix.O_NONBLOCK, 0); err != nil {
		t.Fatal(err)
	} else if n := unread(r); n != 0 {
		w.Close()
		t.Fatalf("%d bytes still in the fifo", n)
	} else {
		w.Close()
	}
}

// TestExecDeleteAwaitsASeenClientsRead: a client whose reader was open (or
// being opened) when the shim opened the fifo may not have seen its open
// return yet when the exit is reported (ctr 1.x's goroutine, on a loaded
// node); ctr drops what the fifo holds once the exec's Delete has returned.
// AwaitClients returns once the client has read it.
func TestExecDeleteAwaitsASeenClientsRead(t *testing.T) {
	path := clientFifoPath(t)
	client, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	pio := exitedProcess(t, path, "hello")
	defer pio.Close()
	awaited := make(chan error, 1)
	go func() { awaited <- pio.AwaitClients() }()
	got := make([]byte, 5)
	if n := unread(client); n != len(got) {
		t.Fatalf("%d bytes in the fifo, want %d", n, len(got))
	}
	select {
	case err := <-awaited:
		t.Fatalf("AwaitClients returned (%v) with the output unread", err)
	default:
	}
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "hello" {
		t.Fatalf("client read %q, %v", got, err)
	}
	if err := <-awaited; err != nil {
		t.Fatalf("AwaitClients after the client read everything: %v", err)
	}
}

// TestSeenClientThatDoesNotReadIsAwaitedWithinABound: a client that never
// reads holds an exec's Delete up only until the deadline, and still finds
// everything in its fifo after Close.
func TestSeenClientThatDoesNotReadIsAwaitedWithinABound(t *testing.T) {
	path := clientFifoPath(t)
	client, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	pio := exitedProcess(t, path, "hello")
	if err := pio.fifos[0].awaitTaken(time.Now()); err == nil {
		t.Fatal("awaiting a client that did not read: no error")
	}
	pio.Close()
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "hello" {
		t.Fatalf("client read %q, %v", got, err)
	}
}

// TestLateClientAfterALingeringWriter: a child of the process keeps its
// stdout past the exit (the drain is reported with the pump still running);
// once the child is gone too, a late client still gets everything and EOF.
func TestLateClientAfterALingeringWriter(t *testing.T) {
	path := clientFifoPath(t)
	pio, child := exitedWithALingeringWriter(t, path, "hello")
	defer pio.Close()
	unix.Write(child, []byte(" again"))
	unix.Close(child)
	got, err := io.ReadAll(openLate(t, path))
	if err != nil || string(got) != "hello again" {
		t.Fatalf("late client read %q, %v", got, err)
	}
}

// TestExecDeleteAwaitsTheOutputOfALingeringWriter: the exec's output was
// drained while another process still held its stdout (a child the shim
// forked, in the moment before its exec closes the shim's descriptors), so
// the pump, and with it the hold for a late client, had not ended when the
// exit was reported. The Delete that follows waits for the pump's end and
// then for the client, as it does without the lingering writer: ctr 1.x
// gives up on its reader once the Delete has returned.
func TestExecDeleteAwaitsTheOutputOfALingeringWriter(t *testing.T) {
	path := clientFifoPath(t)
	pio, lingering := exitedWithALingeringWriter(t, path, "hello")
	defer pio.Close()
	if err := pio.fifos[0].awaitTaken(time.Now()); err == nil {
		t.Fatal("the output is neither ended nor read, and awaiting it found nothing to wait for")
	}
	awaited := make(chan error, 1)
	go func() { awaited <- pio.AwaitClients() }()
	unix.Close(lingering)
	client := openLate(t, path)
	select {
	case err := <-awaited:
		t.Fatalf("AwaitClients returned (%v) before the client read", err)
	default:
	}
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "hello" {
		t.Fatalf("late client read %q, %v", got, err)
	}
	if err := <-awaited; err != nil {
		t.Fatalf("AwaitClients after the client read everything: %v", err)
	}
}

// TestExecDeleteAwaitsTheEndOfASeenClientsOutput: output still on its way
// when the exit was reported (another process held the stdout: a child the
// shim forked; a terminal with a slow client) reaches a client that reads
// before the exec's Delete closes the pump, even when the fifo was empty
// for a moment (containerd 1.6's TestContainerExecLargeOutputWithTTY lost
// its tail that way).
func TestExecDeleteAwaitsTheEndOfASeenClientsOutput(t *testing.T) {
	path := clientFifoPath(t)
	client, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	pio, lingering := exitedWithALingeringWriter(t, path, "hello")
	defer pio.Close()
	got := make([]byte, 5)
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "hello" {
		t.Fatalf("client read %q, %v", got, err)
	}
	if err := pio.fifos[0].awaitTaken(time.Now()); err == nil {
		t.Fatal("the fifo is empty but the output goes on, and awaiting it found nothing to wait for")
	}
	awaited := make(chan error, 1)
	go func() { awaited <- pio.AwaitClients() }()
	unix.Write(lingering, []byte(" again"))
	unix.Close(lingering)
	rest, err := io.ReadAll(blocking(t, client))
	if err != nil || string(rest) != " again" {
		t.Fatalf("client read %q, %v after the exit", rest, err)
	}
	if err := <-awaited; err != nil {
		t.Fatalf("AwaitClients after the output ended and was read: %v", err)
	}
}

// blocking is f made blocking: reads wait for data or EOF.
func blocking(t *testing.T, f *os.File) *os.File {
	t.Helper()
	if err := unix.SetNonblock(int(f.Fd()), false); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestLateClientAcrossAHandover: a fifo held for a late client is held
// again by the next process (and by this one if the handover is abandoned).
func TestLateClientAcrossAHandover(t *testing.T) {
	for _, abandon := range []bool{false, true} {
		for _, out := range []string{"hello", ""} {
			path := clientFifoPath(t)
			pio := exitedProcess(t, path, out)
			st, err := pio.Handover()
			if err != nil {
				t.Fatal(err)
			}
			next := pio
			if abandon {
				// As the shim does: the written-down duplicates go first.
				for _, fd := range st.Fds() {
					unix.Close(fd)
				}
				if err := pio.Resume(); err != nil {
					t.Fatal(err)
				}
			} else {
				pio.Close() // as execve closes what the previous process held
				if next, err = Restore(Paths{Stdout: path}, st, nil); err != nil {
					t.Fatal(err)
				}
				// The take-back is complete: the received descriptors
				// go, the IO goes on.
				for _, fd := range st.Fds() {
					unix.Close(fd)
				}
				if err := next.Resume(); err != nil {
					t.Fatal(err)
				}
			}
			// The pump ended before the handover: an exec's Delete has no
			// pump end to wait for, only the client.
			for _, f := range next.fifos {
				select {
				case <-f.ended:
				default:
					t.Fatalf("abandoned %v: the fifo's output is not known to have ended", abandon)
				}
			}
			got, err := io.ReadAll(openLate(t, path))
			if err != nil || string(got) != out {
				t.Fatalf("abandoned %v: late client read %q, %v; want %q", abandon, got, err, out)
			}
			next.Close()
		}
	}
}

// TestClientsAreAwaitedAllAtOnce: the fifos of several execs' stdio (a
// container's Delete takes its leftover execs along) whose clients do not
// read yet are all awaited at once: every wait has begun before any ends.
// One after another, each would use up its own bound before the next
// began, and the Delete would take their sum.
func TestClientsAreAwaitedAllAtOnce(t *testing.T) {
	const n = 3
	var ios []*IO
	var clients []*os.File
	events := make(chan bool, 2*n)
	for range n {
		path := clientFifoPath(t)
		client, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		pio := exitedProcess(t, path, "hello")
		defer pio.Close()
		pio.fifos[0].awaiting = func(begins bool) { events <- begins }
		ios, clients = append(ios, pio), append(clients, client)
	}
	awaited := make(chan error, 1)
	go func() { awaited <- AwaitAllClients(ios...) }()
	var order []bool
	for len(order) < n {
		order = append(order, <-events)
	}
	for _, c := range clients {
		if got, err := io.ReadAll(io.LimitReader(blocking(t, c), 5)); err != nil || string(got) != "hello" {
			t.Fatalf("client read %q, %v", got, err)
		}
	}
	if err := <-awaited; err != nil {
		t.Fatalf("AwaitAllClients once every client read: %v", err)
	}
	for len(order) < 2*n {
		order = append(order, <-events)
	}
	for i, begins := range order[:n] {
		if !begins {
			t.Fatalf("wait events %v: wait %d ended before every wait had begun", order, i)
		}
	}
}
