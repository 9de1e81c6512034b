package stdio

import (
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/fdpass"
	"github.com/tether-shim/tether/internal/pipetest"
)

// TestIOMovesToTheNextProcess: an IO written down and taken back (here in
// the same process, on the same descriptors) goes on moving the process's
// output and the client's input once resumed; nothing written before,
// during or after the handover is lost or doubled, and a take-back that
// is abandoned before Resume moves nothing and leaves the state whole.
func TestIOMovesToTheNextProcess(t *testing.T) {
	dir := t.TempDir()
	paths := Paths{Stdin: filepath.Join(dir, "in"), Stdout: filepath.Join(dir, "out"), Stderr: filepath.Join(dir, "err")}
	for _, p := range []string{paths.Stdin, paths.Stdout, paths.Stderr} {
		if err := unix.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	clientIn, err := os.OpenFile(paths.Stdin, os.O_RDWR, 0) // RDWR: opens without a reader
	if err != nil {
		t.Fatal(err)
	}
	pio, err := Open(paths, Config{})
	if err != nil {
		t.Fatal(err)
	}
	stdout, _ := os.OpenFile(paths.Stdout, os.O_RDONLY, 0)
	// The "process": its ends of the pipes.
	procIn, procOut := pio.child[0], pio.child[1]
	pio.child[0], pio.child[1] = nil, nil
	pio.Started()

	procOut.Write([]byte("before|"))
	clientIn.Write([]byte("in-before|"))
	st, err := pio.Handover()
	if err != nil {
		t.Fatal(err)
	}
	procOut.Write([]byte("during|"))
	clientIn.Write([]byte("in-during|"))
	adopt := func(int) (<-chan runc.Exit, error) { return nil, nil }
	// A first take-back that goes no further (a later step failed, the
	// shim rolls back): nothing moved, and the state is whole for the
	// next one.
	waiting := func() int { n, _ := unix.IoctlGetInt(st.Outputs[0].Src, unix.TIOCINQ); return n }
	before := waiting()
	if before < len("during|") {
		t.Fatalf("%d bytes wait in the process's stdout after the handover, want at least %d", before, len("during|"))
	}
	if _, err := Restore(paths, st, adopt); err != nil {
		t.Fatal(err)
	}
	if n := waiting(); n != before {
		t.Fatalf("%d bytes wait in the process's stdout after a take-back without Resume, want %d: a pump ran", n, before)
	}
	next, err := Restore(paths, st, adopt)
	if err != nil {
		t.Fatal(err)
	}
	// The take-back is complete: the received descriptors go.
	fdpass.Close(st.Fds()...)
	if err := next.Resume(); err != nil {
		t.Fatal(err)
	}
	procOut.Write([]byte("after"))
	procOut.Close()
	got := make([]byte, 0, 64)
	buf := make([]byte, 64)
	for len(got) < len("before|during|after") {
		n, err := stdout.Read(buf)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "before|during|after" {
		t.Fatalf("client read %q", got)
	}
	in := make([]byte, len("in-before|in-during|"))
	if _, err := io.ReadFull(procIn, in); err != nil || string(in) != "in-before|in-during|" {
		t.Fatalf("process read %q %v", in, err)
	}
	next.Close()
	clientIn.Close()
	stdout.Close()
	// The IO handed over is done with (in the shim, its process is gone).
	runtime.GC()
}

// TestRestoreMatchesPumpsBeforeHolding: an IO taken back with a fifo held
// for a late client and a pump into something else. The hold, once
// started, lets go of the fifo's reader (under the fifo's lock); matching
// the pumps to the fifos reads those readers, so it must be done before any
// hold starts: Restore matches, Resume starts the holds (the race detector
// flags code that matched while holds ran).
func TestRestoreMatchesPumpsBeforeHolding(t *testing.T) {
	for range 4 {
		restoreHeldFifos(t)
	}
}

// restoreHeldFifos takes back an IO with many held fifos: some holds let go
// of their readers while Restore goes on, which the race detector sees
// unless Restore is done with the readers by then.
func restoreHeldFifos(t *testing.T) {
	const fifos = 256
	var st State
	st.StdinKeepOpen, st.Console = -1, -1
	for range fifos {
		// Raw descriptors, as a previous process leaves them: Restore owns them.
		held, err := unix.Open(clientFifoPath(t), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0) // empty, no client yet
		if err != nil {
			t.Fatal(err)
		}
		st.Readers = append(st.Readers, ReaderState{Fd: held, Held: true})
	}
	var out, toClient [2]int
	if err := unix.Pipe2(out[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	if err := unix.Pipe2(toClient[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	proc := os.NewFile(uintptr(out[1]), "process")
	client := os.NewFile(uintptr(toClient[0]), "client")
	defer client.Close()
	st.Outputs = []PumpState{{Src: out[0], Dst: toClient[1]}}
	pio, err := Restore(Paths{}, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pio.Close()
	// The take-back is complete: the received descriptors go (the IO holds
	// duplicates), and the pumps and the holds start with Resume.
	fdpass.Close(st.Fds()...)
	if err := pio.Resume(); err != nil {
		t.Fatal(err)
	}
	pio.mu.Lock()
	restored := pio.fifos
	pio.mu.Unlock()
	if len(restored) != fifos {
		t.Fatalf("%d fifos taken back, want %d", len(restored), fifos)
	}
	for _, f := range restored {
		f.mu.Lock()
		hold := f.hold
		f.mu.Unlock()
		if hold == nil {
			t.Fatal("a held fifo is not held again")
		}
		<-hold.taken // the hold has found the fifo empty and is letting go of its reader
	}
	proc.WriteString("out")
	proc.Close()
	if got := pipetest.ReadAll(t, client, "the restored pump's output"); string(got) != "out" {
		t.Fatalf("restored pump moved %q", got)
	}
}
