package stdio

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/pipetest"
	"github.com/tether-shim/tether/stdio/pump"
)

// TestStdinReachesALateReaderWithEOF: the client writes all its stdin (as
// much as the process's pipe holds) and closes it before the process reads
// anything (nerdctl run -i with `sleep 1; md5sum`). The process must read it
// all, then EOF.
func TestStdinReachesALateReaderWithEOF(t *testing.T) {
	for _, size := range []int{64 << 10, 64<<10 + 1000, 3000} {
		path := filepath.Join(t.TempDir(), "stdin")
		if err := unix.Mkfifo(path, 0o600); err != nil {
			t.Fatal(err)
		}
		pio, err := Open(Paths{Stdin: path}, Config{})
		if err != nil {
			t.Fatal(err)
		}
		procStdin := pio.child[0]
		pio.child[0] = nil // the process's end: the test reads it
		if err := pio.CloseAfterStart(); err != nil {
			t.Fatal(err)
		}
		client, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		data := bytes.Repeat([]byte("stdin-data\n"), size/11+1)[:size]
		if _, err := client.Write(data); err != nil {
			t.Fatal(err)
		}
		client.Close()
		pio.CloseStdin() // CloseIO: the client is done
		// Only now does the process read (it was asleep until then): once
		// the pump has taken what fits, with the process's pipe full.
		if size <= 64<<10 {
			waitFifoEmpty(t, path)
		}
		if got := pipetest.ReadAll(t, procStdin, "the process's stdin"); !bytes.Equal(got, data) {
			t.Fatalf("%d bytes of stdin: the process read %d", size, len(got))
		}
		procStdin.Close()
		pio.Close()
	}
}

// waitFifoEmpty waits until nothing is left in the fifo at path (the pump
// has taken it all), polling: the fifo signals nothing to a third party.
func waitFifoEmpty(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	deadline := time.Now().Add(pipetest.HangGuard)
	for unread(f) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the pump never took the client's stdin")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPumpEndsWhenAClientsStdinEndsWhileTheProcessIsNotReading: stdin's
// direction of the same end: the client's fifo has hung up with nothing
// left in it while the process's stdin pipe is full.
func TestPumpEndsWhenAClientsStdinEndsWhileTheProcessIsNotReading(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stdin")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	src, keepOpen, err := openStdinFifo(path)
	if err != nil {
		t.Fatal(err)
	}
	procR, procW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	want := pipetest.Fill(t, procW)
	keepOpen.Close() // CloseIO, with no client writer left
	p, err := pump.New(src, procW, pump.Options{})
	if err != nil {
		t.Fatal(err)
	}
	go p.Run()
	defer p.Stop()
	if got := pipetest.ReadAll(t, procR, "the process's stdin"); !bytes.Equal(got, want) {
		t.Fatalf("the process read %d bytes, want %d", len(got), len(want))
	}
}
