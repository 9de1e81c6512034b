package smallfile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestRead: a file larger than the buffer is read whole; a missing one
// (or none, a controller the cgroup lacks) is fs.ErrNotExist, as the
// callers tell a cgroup that is gone.
func TestRead(t *testing.T) {
	want := bytes.Repeat([]byte("0123456789abcdef\n"), 700)
	path := filepath.Join(t.TempDir(), "memory.stat")
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	var buf [64]byte
	got, err := Read(path, buf[:0])
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes (%v), want %d", len(got), err, len(want))
	}
	for _, p := range []string{filepath.Join(t.TempDir(), "gone"), ""} {
		if _, err := Read(p, buf[:0]); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Read(%q): %v, want fs.ErrNotExist", p, err)
		}
	}
}
