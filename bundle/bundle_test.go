package bundle

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestExitFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "init.exit")
	at := time.Unix(1700000000, 123456789)
	if err := WriteExit(path, 137, at); err != nil {
		t.Fatal(err)
	}
	status, got, err := ReadExit(path)
	if err != nil || status != 137 || !got.Equal(at) {
		t.Fatalf("got %d %v %v", status, got, err)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, _, err := ReadExit(path); err == nil {
		t.Fatal("malformed file accepted")
	}
}

func TestRemoveShimFilesLeavesTheRest(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{InitPidFile, "init.exit", RuntimeConfigFile, "exec-a.pid", "exec-a.exit", ".runtime-kill-1.log", "config.json", AddressFile} {
		os.WriteFile(filepath.Join(dir, name), nil, 0o600)
	}
	RemoveShimFiles(dir)
	entries, _ := os.ReadDir(dir)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if len(left) != 2 || left[0] != AddressFile || left[1] != "config.json" {
		t.Fatalf("left %v, want [address config.json]", left)
	}
}
