package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

// TestLogURIs: a file:// log URI appends the container's output to a file;
// a binary:// one hands it to a logging binary (stdout on fd 3, stderr on
// fd 4, ready when fd 5 closes) that gets the container's id and namespace.
func TestLogURIs(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()

	logFile := filepath.Join(dir, "logs", "file.log")
	id := e.id("filelog")
	e.ctr("run", "--rm", "--log-uri", "file://"+logFile, "--runtime", harness.Runtime, harness.BusyboxImageName, id,
		"sh", "-c", "echo to the file; echo errors too >&2")
	data, err := os.ReadFile(logFile)
	if err != nil || !strings.Contains(string(data), "to the file\n") || !strings.Contains(string(data), "errors too\n") {
		t.Fatalf("log file: %q %v", data, err)
	}

	out := filepath.Join(dir, "binlog")
	logger := filepath.Join(dir, "logger")
	if err := os.WriteFile(logger, []byte(`#!/bin/sh
# args: the URI's query, key then value
while [ $# -gt 1 ]; do [ "$1" = out ] && out=$2; shift 2; done
echo "$CONTAINER_NAMESPACE/$CONTAINER_ID" > "$out.env"
cat <&3 5>&- > "$out.stdout" &
cat <&4 5>&- > "$out.stderr" &
exec 5>&-
wait
`), 0o755); err != nil {
		t.Fatal(err)
	}
	id = e.id("binlog")
	e.ctr("run", "--rm", "--log-uri", "binary://"+logger+"?out="+out, "--runtime", harness.Runtime, harness.BusyboxImageName, id,
		"sh", "-c", "echo to the logger; echo logger errors >&2")
	e.waitFor("the logger's files", 10*time.Second, func() bool {
		so, _ := os.ReadFile(out + ".stdout")
		se, _ := os.ReadFile(out + ".stderr")
		return string(so) == "to the logger\n" && string(se) == "logger errors\n"
	})
	env, _ := os.ReadFile(out + ".env")
	if strings.TrimSpace(string(env)) != e.ctd.Namespace+"/"+id {
		t.Fatalf("logger environment %q", env)
	}

	res, err := e.ctrErr(nil, "run", "--rm", "--log-uri", "smtp://example/x", "--runtime", harness.Runtime, harness.BusyboxImageName, e.id("badlog"), "true")
	if err == nil || !strings.Contains(res.Stderr, "smtp") {
		t.Fatalf("unknown log URI scheme: %v %q", err, res.Stderr)
	}
}
