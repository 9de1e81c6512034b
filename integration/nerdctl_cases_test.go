package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

// TestNerdctlLogs: a detached container's output through nerdctl's
// logging binary (a binary:// log URI the shim starts): followed to the
// end, its tail, since a moment, and 7 MB of it byte for byte.
func TestNerdctlLogs(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, n *nerdctlEnv) {
		n.must(nil, n.runArgs("-d", "--name", "counter", harness.BusyboxImageName, "sh", "-c",
			"i=0; while [ $i -lt 50 ]; do echo line$i; i=$((i+1)); sleep 0.02; done; echo the-end >&2")...)
		// Follow from while it runs to its end: nerdctl returns once it exits.
		res := n.must(nil, "logs", "-f", "counter")
		var want strings.Builder
		for i := range 50 {
			fmt.Fprintf(&want, "line%d\n", i)
		}
		if res.Stdout != want.String() || res.Stderr != "the-end\n" {
			t.Errorf("logs -f: stdout %q, stderr %q; want 50 lines and the-end on stderr", res.Stdout, res.Stderr)
		}
		// The last three lines of the log, stderr's among them.
		if res := n.must(nil, "logs", "--tail", "3", "counter"); res.Stdout != "line48\nline49\n" || res.Stderr != "the-end\n" {
			t.Errorf("logs --tail 3: stdout %q, stderr %q", res.Stdout, res.Stderr)
		}

		// --since: what was written after a moment, not before it. nerdctl
		// counts in whole seconds: the moment is the first second after
		// the first line, and the second line is written once it has come.
		n.must(nil, n.runArgs("-d", "--name", "since", harness.BusyboxImageName, "sh", "-c",
			"echo before; while [ ! -e /go ]; do sleep 0.05; done; echo after; sleep 100000")...)
		var first time.Time
		n.waitFor("the first line in the log", time.Minute, func() bool {
			res, err := n.exec(nil, "logs", "-t", "since")
			stamp, line, _ := strings.Cut(strings.TrimSuffix(res.Stdout, "\n"), " ")
			first, _ = time.Parse(time.RFC3339Nano, stamp)
			return err == nil && line == "before"
		})
		moment := first.Truncate(time.Second).Add(time.Second)
		n.waitFor("the clock to pass "+moment.String(), time.Minute, func() bool { return time.Now().After(moment) })
		n.must(nil, "exec", "since", "touch", "/go")
		n.waitFor("the second line in the log", time.Minute, func() bool {
			res, err := n.exec(nil, "logs", "since")
			return err == nil && res.Stdout == "before\nafter\n"
		})
		since := moment.UTC().Format(time.RFC3339)
		if res := n.must(nil, "logs", "--since", since, "since"); res.Stdout != "after\n" {
			t.Errorf("logs --since %s: %q, want only the line written after it", since, res.Stdout)
		}

		// Much output, all of it, in order. The container stays: nerdctl's
		// logging binary stops reading once the task has exited, and drops
		// what is still in its pipe then (for any shim).
		n.must(nil, n.runArgs("-d", "--name", "seq", harness.BusyboxImageName, "sh", "-c", "seq 1000000; exec sleep 100000")...)
		var seq strings.Builder
		for i := 1; i <= 1000000; i++ {
			seq.WriteString(strconv.Itoa(i))
			seq.WriteByte('\n')
		}
		var logged string
		n.waitFor("the whole output in the log", 2*time.Minute, func() bool {
			res, err := n.exec(nil, "logs", "seq")
			logged = res.Stdout
			return err == nil && len(logged) >= seq.Len()
		})
		if logged != seq.String() {
			t.Errorf("logs of seq 1000000: %d bytes, want %d (tail %q)", len(logged), seq.Len(), tail(logged, 40))
		}
	})
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestNerdctlStats: nerdctl stats reads the task's metrics.
func TestNerdctlStats(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, n *nerdctlEnv) {
		n.must(nil, n.runArgs("-d", "--name", "stats", "-m", "64m", harness.BusyboxImageName, "sh", "-c", "sleep 100000 & sleep 100000")...)
		res := n.must(nil, "stats", "--no-stream", "--format", "{{json .}}", "stats")
		var stats struct{ Name, MemUsage, PIDs string }
		if err := json.Unmarshal([]byte(strings.TrimSpace(res.Stdout)), &stats); err != nil {
			t.Fatalf("stats output %q: %v", res.Stdout, err)
		}
		if stats.Name != "stats" || stats.PIDs != "2" || !strings.HasSuffix(stats.MemUsage, "/ 64MiB") || strings.HasPrefix(stats.MemUsage, "0B") {
			t.Errorf("stats: %+v; want 2 pids (sh execs the last sleep) and some memory of the 64MiB limit", stats)
		}
	})
}

// TestNerdctlRestartPolicy: containerd's restart monitor starts a
// container that exits again (a new task on the same shim runtime, with
// the same log URI), and leaves one nerdctl stopped alone.
func TestNerdctlRestartPolicy(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, n *nerdctlEnv) {
		n.must(nil, n.runArgs("-d", "--name", "again", "--restart", "always", harness.BusyboxImageName, "sh", "-c", "echo started; exit 1")...)
		n.waitFor("three starts in the log", 2*time.Minute, func() bool {
			res, err := n.exec(nil, "logs", "again")
			return err == nil && strings.Count(res.Stdout, "started\n") >= 3
		})
		n.must(nil, "stop", "again")
		// A round of the monitor that began before the stop may still
		// start it once more (containerd's race, for any shim); then it
		// stays stopped.
		n.waitFor("the container to be exited and explicitly stopped", time.Minute, func() bool {
			res, _ := n.exec(nil, "inspect", "--format", "{{.State.Status}} {{index .Config.Labels \"containerd.io/restart.explicitly-stopped\"}}", "again")
			return strings.TrimSpace(res.Stdout) == "exited true"
		})
	})
}

// TestNerdctlPublishedPort: a port published on nerdctl's default bridge
// (CNI bridge, portmap and firewall from Debian's plugins, in the private
// containerd's network namespace) reaches the container.
func TestNerdctlPublishedPort(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, n *nerdctlEnv) {
		n.must(nil, n.runArgs("-d", "--name", "web", "-p", "8080:80", harness.BusyboxImageName, "sh", "-c",
			"mkdir /www && echo hello-from-"+n.runtime+" > /www/index.html && exec httpd -f -p 80 -h /www")...)
		if res := n.must(nil, "port", "web"); !strings.Contains(res.Stdout, "80/tcp -> 0.0.0.0:8080") {
			t.Errorf("nerdctl port: %q", res.Stdout)
		}
		var body string
		n.waitFor("the published port to answer", time.Minute, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, "nsenter", "--net=/proc/"+strconv.Itoa(n.ctd.Pid())+"/ns/net",
				"curl", "-sS", "--max-time", "5", "http://127.0.0.1:8080/").Output()
			body = string(out)
			return err == nil
		})
		if body != "hello-from-"+n.runtime+"\n" {
			t.Errorf("published port answered %q", body)
		}
	})
}

// TestNerdctlOOM: a container past its memory limit is killed by the
// kernel; nerdctl run reports 137 and containerd publishes the OOM.
func TestNerdctlOOM(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, n *nerdctlEnv) {
		ctx, cancel := context.WithTimeout(context.Background(), nerdctlTimeout)
		defer cancel()
		events := n.command(ctx, "events", "--format", "{{json .}}")
		var out lockedBuffer
		events.Stdout = &out
		if err := events.Start(); err != nil {
			t.Fatal(err)
		}
		res, err := n.exec(nil, n.runArgs("--name", "oom", "-m", "32m", "--memory-swap", "32m", harness.BusyboxImageName, "sh", "-c", "tail /dev/zero")...)
		if err == nil || res.ExitCode != 137 {
			t.Errorf("nerdctl run past its memory limit: %v, exit %d; want 137", err, res.ExitCode)
		}
		n.waitFor("the OOM event", time.Minute, func() bool { return strings.Contains(out.String(), "/tasks/oom") })
		cancel()
		events.Wait()
	})
}

// TestNerdctlLoggerWaitAnswered: nerdctl's logging binary waits for the
// task's exit through containerd and ends once told; every such Wait is
// answered while its caller is there (containerd logs "ttrpc: received
// message on inactive stream" for an answer whose caller has gone). With
// tether it used to end on EOF first: the shim dropped its own ends of the
// logger's pipes once the process had started, and each logger's Wait was
// answered after it had gone.
func TestNerdctlLoggerWaitAnswered(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, n *nerdctlEnv) {
		names := []string{"quick1", "quick2", "quick3"}
		for _, name := range names {
			n.must(nil, n.runArgs("-d", "--name", name, harness.BusyboxImageName, "echo", "hi from "+name)...)
		}
		for _, name := range names {
			if res := n.must(nil, "wait", name); strings.TrimSpace(res.Stdout) != "0" {
				t.Fatalf("wait %s: %q", name, res.Stdout)
			}
			id := strings.TrimSpace(n.must(nil, "inspect", "--format", "{{.ID}}", name).Stdout)
			n.waitFor("the logger of "+name+" to end on its own", time.Minute, func() bool { return !loggerRunning(id) })
			if res := n.must(nil, "logs", name); res.Stdout != "hi from "+name+"\n" {
				t.Errorf("logs %s: %q", name, res.Stdout)
			}
		}
		if got := strings.Count(n.ctd.FullLog(), inactiveStream); got != 0 {
			t.Errorf("containerd logged %q %d times: answers to callers that had gone", inactiveStream, got)
		}
	})
}

// loggerRunning says whether a nerdctl logging binary for the container id
// runs (the shim starts it with nerdctl's logging argument and tells it
// the id in its environment).
func loggerRunning(id string) bool {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, proc := range procs {
		cmdline, err := os.ReadFile(filepath.Join(proc, "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte("_NERDCTL_INTERNAL_LOGGING")) {
			continue
		}
		environ, err := os.ReadFile(filepath.Join(proc, "environ"))
		if err == nil && bytes.Contains(environ, []byte("CONTAINER_ID="+id+"\x00")) {
			return true
		}
	}
	return false
}

// TestNerdctlDetachedTerminalLogs: a detached container with a terminal
// (nerdctl run -dt, docker run -dit) logs through nerdctl's logging binary
// too: containerd's runc shim copies the terminal's output into the
// binary's stdout; tether refused a logging URI with a terminal.
func TestNerdctlDetachedTerminalLogs(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, n *nerdctlEnv) {
		n.must(nil, n.runArgs("-d", "-t", "--name", "ttylog", harness.BusyboxImageName, "sh", "-c",
			"echo through the terminal; echo stderr too >&2; sleep 100000")...)
		want := "through the terminal\r\nstderr too\r\n"
		var got string
		n.waitFor("the terminal's output in the log", time.Minute, func() bool {
			res, err := n.exec(nil, "logs", "ttylog")
			got = res.Stdout
			return err == nil && got == want
		})
	})
}
