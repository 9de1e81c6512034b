// Package pipetest holds what the tests of tether's byte pumps share: a pipe
// filled to the brim, and a read to EOF that calls a pump stuck when the EOF
// never comes.
package pipetest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// HangGuard is how long a test waits for an end that must come before it
// calls the pump stuck; the end itself comes at once.
const HangGuard = 10 * time.Second

// Fill writes into w (nonblocking) until the pipe is full and returns what
// it wrote.
func Fill(t *testing.T, w *os.File) []byte {
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

// ReadAll reads r to EOF, failing the test if EOF does not come within
// HangGuard.
func ReadAll(t *testing.T, r io.Reader, what string) []byte {
	t.Helper()
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(r); got <- b }()
	select {
	case b := <-got:
		return b
	case <-time.After(HangGuard):
		t.Fatalf("%s never reached EOF: the pump is stuck", what)
		return nil
	}
}
