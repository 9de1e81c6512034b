package shim

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tether-shim/tether/reaper"
)

func TestLastLoggedError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.json")
	os.WriteFile(path, []byte(`{"level":"warning","msg":"a warning","time":"x"}
not json at all
{"level":"error","msg":"first error","time":"x"}
{"level":"error","msg":"unable to start container process: exec: \"nope\": executable file not found in $PATH","time":"x"}
{"level":"info","msg":"later info","time":"x"}
`), 0o600)
	if got := lastLoggedError(path); got != `unable to start container process: exec: "nope": executable file not found in $PATH` {
		t.Fatalf("got %q", got)
	}
	os.WriteFile(path, []byte(`{"level":"info","msg":"only info"}`+"\n"), 0o600)
	if got := lastLoggedError(path); got != "only info" {
		t.Fatalf("got %q", got)
	}
	if got := lastLoggedError(filepath.Join(t.TempDir(), "missing")); got != "" {
		t.Fatalf("missing log: %q", got)
	}
}

func TestExitFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "init.exit")
	at := time.Unix(1700000000, 123456789)
	if err := writeExitFile(path, reaper.Exit{Pid: 1, Status: 137, Time: at}); err != nil {
		t.Fatal(err)
	}
	status, got, err := ReadExitFile(path)
	if err != nil || status != 137 || !got.Equal(at) {
		t.Fatalf("got %d %v %v", status, got, err)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, _, err := ReadExitFile(path); err == nil {
		t.Fatal("malformed file accepted")
	}
}
