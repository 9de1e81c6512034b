package integration

import (
	"os"
	"path/filepath"
	"strconv"
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

// TestLoggingBinaryPipesHeldUntilDelete: the shim keeps its own write ends
// of a logging binary's pipes until the process's Delete, as containerd's
// runc shim does: the binary reads no EOF when the container exits (a
// logger such as nerdctl's learns of the exit from its own Wait, which then
// finds its caller still there), and is let go at Delete, also after a
// live upgrade.
func TestLoggingBinaryPipesHeldUntilDelete(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "binlog")
	logger := filepath.Join(dir, "logger")
	// It ends on EOF alone (the Delete's SIGTERM is ignored), and says so.
	if err := os.WriteFile(logger, []byte(`#!/bin/sh
trap '' TERM
echo $$ > "$1.pid"
cat <&3 5>&- > "$1.stdout" &
exec 5>&-
wait
echo ended > "$1.ended"
`), 0o755); err != nil {
		t.Fatal(err)
	}
	id := e.id("heldlog")
	e.ctr("run", "-d", "--log-uri", "binary://"+logger+"?"+out, "--runtime", harness.Runtime, harness.BusyboxImageName, id, "echo", "hi")
	t.Cleanup(func() { e.remove(id) })
	e.waitFor("the container to exit", time.Minute, func() bool { return e.taskStatus(id) == "STOPPED" })
	pidData, err := os.ReadFile(out + ".pid")
	if err != nil {
		t.Fatal(err)
	}
	pipe, err := os.Readlink("/proc/" + strings.TrimSpace(string(pidData)) + "/fd/3")
	if err != nil {
		t.Fatal(err)
	}
	writers := pipeWriters(t, pipe)
	if len(writers) != 1 || !strings.HasPrefix(writers[0], "containerd-shim") {
		t.Fatalf("after the container exited, %s has writers %v; want the shim alone", pipe, writers)
	}
	if _, err := os.Stat(out + ".ended"); err == nil {
		t.Fatal("the logger read EOF before the Delete")
	}
	// A live upgrade carries the shim's write ends over.
	next := buildTether(t, t.TempDir(), "containerd-shim-tether-v2", "v-next")
	if out, err := upgradeShims(t, next, "-namespace", e.ctd.Namespace, "-id", id, "-binary", next); err != nil {
		t.Fatalf("upgrade: %v\n%s", err, out)
	}
	if after := pipeWriters(t, pipe); len(after) != 1 || !strings.HasPrefix(after[0], "containerd-shim") {
		t.Fatalf("after a live upgrade, %s has writers %v; want the shim alone", pipe, after)
	}
	e.ctr("task", "rm", id)
	e.waitFor("the logger to end", time.Minute, func() bool {
		_, err := os.Stat(out + ".ended")
		return err == nil
	})
	if data, _ := os.ReadFile(out + ".stdout"); string(data) != "hi\n" {
		t.Fatalf("logged %q", data)
	}
}

// pipeWriters lists the processes (by name) holding a write end of pipe
// ("pipe:[inode]").
func pipeWriters(t *testing.T, pipe string) []string {
	t.Helper()
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	var writers []string
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err != nil || target != pipe {
			continue
		}
		proc := filepath.Dir(filepath.Dir(fd))
		info, err := os.ReadFile(filepath.Join(proc, "fdinfo", filepath.Base(fd)))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if flags, ok := strings.CutPrefix(line, "flags:"); ok {
				if v, err := strconv.ParseUint(strings.TrimSpace(flags), 8, 32); err == nil && v&3 == 1 {
					comm, _ := os.ReadFile(filepath.Join(proc, "comm"))
					writers = append(writers, strings.TrimSpace(string(comm)))
				}
			}
		}
	}
	return writers
}

// TestLoggingBinaryV2: containerd 2.3's binary-v2:// log URI, through a
// real logging binary (testdata/logger): a binary that writes its ready
// byte on CONTAINER_WAIT gets the container's output; one that closes the
// pipe without it is refused (as containerd's runc shim refuses it), where
// binary:// still takes the close as ready; one that exits first is refused
// under both, and nothing of the failed creates is left.
func TestLoggingBinaryV2(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()
	logger := filepath.Join(dir, "logger")
	root, _ := filepath.Abs("..")
	if err := harness.BuildProgram(root, "logger", logger); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		scheme, ready string
		refused       bool
	}{
		{"binary-v2", "byte", false},
		{"binary-v2", "close", true},
		{"binary-v2", "exit", true},
		{"binary", "close", false},
		{"binary", "byte", false},
		{"binary", "exit", false}, // ready by EOF: binary:// cannot tell
	} {
		name := c.scheme + "-" + c.ready
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(dir, name)
			id := e.id("logv2")
			uri := c.scheme + "://" + logger + "?ready=" + c.ready + "&out=" + out
			res, err := e.ctrErr(nil, "run", "--rm", "--log-uri", uri, "--runtime", harness.Runtime, harness.BusyboxImageName, id,
				"sh", "-c", "echo to the logger; echo logger errors >&2")
			defer e.remove(id)
			if c.refused {
				if err == nil || !strings.Contains(res.Stderr, "logging binary") {
					t.Fatalf("%s with a logger that does not say ready: %v, stderr %q; want a refusal", c.scheme, err, res.Stderr)
				}
				if c.ready == "close" && !strings.Contains(res.Stderr, "did not call ready") {
					t.Fatalf("refusal %q does not say the logger did not call ready", res.Stderr)
				}
				if status := e.taskStatus(id); status != "" {
					t.Fatalf("a task is left after the refused create: %s", status)
				}
				return
			}
			if c.ready == "exit" {
				// Created and run; its output had nowhere to go (EPIPE).
				if strings.Contains(res.Stderr, "failed") {
					t.Fatalf("binary:// with a logger gone before the start: %v, stderr %q", err, res.Stderr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			e.waitFor("the logger's files", time.Minute, func() bool {
				so, _ := os.ReadFile(out + ".stdout")
				se, _ := os.ReadFile(out + ".stderr")
				return string(so) == "to the logger\n" && string(se) == "logger errors\n"
			})
			if env, _ := os.ReadFile(out + ".env"); strings.TrimSpace(string(env)) != e.ctd.Namespace+"/"+id {
				t.Fatalf("logger environment %q", env)
			}
		})
	}
}
