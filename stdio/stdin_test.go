package stdio

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/stdio/pump"
)

// hangGuard is how long a test waits for an end that must come before it
// calls the pump stuck; the end itself comes at once.
const hangGuard = 10 * time.Second

// fillPipe writes into w until the pipe is full and returns what it wrote.
func fillPipe(t *testing.T, w *os.File) []byte {
	t.Helper()
	raw, err := w.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var written []byte
	chunk := bytes.Repeat([]byte("f"), 4096)
	raw.Write(func(fd uintptr) bool {
		for {
			n, err := unix.Write(int(fd), chunk)
			if n > 0 {
				written = append(written, chunk[:n]...)
			}
			if err != nil {
				if !errors.Is(err, unix.EAGAIN) {
					t.Errorf("fill: %v", err)
				}
				return true
			}
		}
	})
	return written
}

// readAllWithin reads r to EOF, failing the test if EOF does not come.
func readAllWithin(t *testing.T, r io.Reader, what string) []byte {
	t.Helper()
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(r); got <- b }()
	select {
	case b := <-got:
		return b
	case <-time.After(hangGuard):
		t.Fatalf("%s never reached EOF: the pump is stuck", what)
		return nil
	}
}

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
		if got := readAllWithin(t, procStdin, "the process's stdin"); !bytes.Equal(got, data) {
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
	deadline := time.Now().Add(hangGuard)
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
	want := fillPipe(t, procW)
	keepOpen.Close() // CloseIO, with no client writer left
	p, err := pump.New(src, procW, pump.Options{})
	if err != nil {
		t.Fatal(err)
	}
	go p.Run()
	defer p.Stop()
	if got := readAllWithin(t, procR, "the process's stdin"); !bytes.Equal(got, want) {
		t.Fatalf("the process read %d bytes, want %d", len(got), len(want))
	}
}
