package pump

import (
	"bytes"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/pipetest"
)

// TestPumpEndsWhenTheSourceEndsWhileTheDestinationIsFull: a process that
// exited (its pipe empty, no writer left) while the client's fifo was full,
// the usual state under an output flood. Between two pipes the kernel then
// answers a splice with EAGAIN, not 0; the pump must still end and close
// the client's side, or containerd waits for that EOF forever and the
// container can be neither stopped nor deleted.
func TestPumpEndsWhenTheSourceEndsWhileTheDestinationIsFull(t *testing.T) {
	for _, splice := range []bool{true, false} {
		srcR, srcW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		dstR, dstW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		want := pipetest.Fill(t, dstW)
		srcW.Close() // the process is gone, having written nothing more
		p, err := New(srcR, dstW, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if !splice {
			p.splice, p.buf = false, make([]byte, 4096)
		}
		go p.Run()
		p.Exited()
		select {
		case <-p.done:
		case <-time.After(pipetest.HangGuard):
			t.Fatalf("splice=%v: the pump did not end at its source's end with a full destination", splice)
		}
		if got := pipetest.ReadAll(t, dstR, "the client's side"); !bytes.Equal(got, want) {
			t.Fatalf("splice=%v: client read %d bytes, want the %d in its pipe", splice, len(got), len(want))
		}
		dstR.Close()
	}
}

// TestPumpEndsWhenTheSourceEndsAfterFillingTheDestination: the flood as it
// happens: the process fills both pipes, exits, and only then the client
// reads. Every byte arrives, then EOF.
func TestPumpEndsWhenTheSourceEndsAfterFillingTheDestination(t *testing.T) {
	for _, splice := range []bool{true, false} {
		proc, client, p, full := pipePumpBlocking(t)
		if !splice {
			p.Stop()
			proc, client, p = pipePump(t, false)
		}
		size, _ := unix.FcntlInt(client.Fd(), unix.F_GETPIPE_SZ, 0)
		data := bytes.Repeat([]byte("0123456789abcdef"), 2*size/16)
		written := make(chan struct{})
		go func() {
			proc.Write(data)
			proc.Close()
			close(written)
		}()
		if splice {
			<-full
		}
		<-written
		p.Exited()
		if got := pipetest.ReadAll(t, client, "the client's side"); !bytes.Equal(got, data) {
			t.Fatalf("splice=%v: client read %d bytes, want %d", splice, len(got), len(data))
		}
	}
}

// TestPumpWaitsForAFullDestinationWhileAWriterLingers: with a writer still
// holding the source and the destination full, the pump neither ends nor
// loses a byte; what the writer adds arrives once the client reads.
func TestPumpWaitsForAFullDestinationWhileAWriterLingers(t *testing.T) {
	proc, client, p, full := pipePumpBlocking(t)
	size, _ := unix.FcntlInt(client.Fd(), unix.F_GETPIPE_SZ, 0)
	first := bytes.Repeat([]byte("a"), size)
	if _, err := proc.Write(first); err != nil {
		t.Fatal(err)
	}
	// A second write fills the destination for sure and leaves the rest
	// in the source.
	second := bytes.Repeat([]byte("b"), size/2)
	go proc.Write(second)
	<-full
	p.Exited()
	select {
	case <-p.done:
		t.Fatal("the pump ended while a writer still held its source")
	default:
	}
	got := make([]byte, len(first)+len(second))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(first, second...)) {
		t.Fatal("output mixed up or lost")
	}
	proc.Write([]byte("late"))
	proc.Close()
	if rest := pipetest.ReadAll(t, client, "the client's side"); string(rest) != "late" {
		t.Fatalf("after the lingering writer: %q", rest)
	}
}
