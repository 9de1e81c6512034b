package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestStartOverWhenQuiet: a shim starts over in a fresh process of its own
// binary at its first quiet moment, and a quiet shim that has grown does
// again (here a build that starts over at every quiet moment), in place:
// same pid, same binary, its container still served. Once the binary on
// disk was replaced, it no longer starts over: that would be an upgrade,
// the operator's call.
func TestStartOverWhenQuiet(t *testing.T) {
	e := setup(t)
	id := e.id("startover")
	e.runDetached(id, "sleep", "100000")
	shim := shimsFor(id)[0].pid
	e.waitFor("the new shim to start over once quiet", 30*time.Second, func() bool {
		return strings.Contains(e.ctd.FullLog(), fmt.Sprintf("msg=\"carrying on after a live upgrade\" runtime=io.containerd.tether.v2 namespace=%s pid=%d", e.ctd.Namespace, shim))
	})
	if res := e.ctr("task", "exec", "--exec-id", "first", id, "echo", "served"); strings.TrimSpace(res.Stdout) != "served" {
		t.Fatalf("exec after the first start over: %q", res.Stdout)
	}
	dir := t.TempDir()
	eager := buildTether(t, dir, "containerd-shim-tether-v2", "v-startover", "testStartOver=yes")
	if out, err := upgradeShims(t, eager, "-namespace", e.ctd.Namespace, "-id", id, "-binary", eager); err != nil {
		t.Fatalf("upgrade onto the eager build: %v: %s", err, out)
	}
	startOvers := func() int {
		return strings.Count(e.ctd.FullLog(), "starting over to hand back memory") + strings.Count(e.ctd.FullLog(), "msg=\"not starting over")
	}
	carriedOn := func() int { return strings.Count(e.ctd.FullLog(), "carrying on after a live upgrade") }
	before, carried := startOvers(), carriedOn()
	// The exec's requests end; 2 s later the shim is quiet and starts over.
	if res := e.ctr("task", "exec", "--exec-id", "grow", id, "echo", "served"); strings.TrimSpace(res.Stdout) != "served" {
		t.Fatalf("exec: %q", res.Stdout)
	}
	e.waitFor("the quiet shim to start over", 30*time.Second, func() bool { return startOvers() > before && carriedOn() > carried })
	if log := e.ctd.FullLog(); !strings.Contains(log, "starting over to hand back memory") || strings.Contains(log, "could not start over") {
		t.Fatalf("no start over, or a failed one:\n%s", e.ctd.Log())
	}
	if p := shimsFor(id); len(p) != 1 || p[0].pid != shim {
		t.Fatalf("shims after starting over: %v, want pid %d", p, shim)
	}
	exe := filepath.Join("/proc", strconv.Itoa(shim), "exe")
	if got, _ := os.Readlink(exe); got != eager {
		t.Fatalf("shim runs %s after starting over, want %s", got, eager)
	}
	if res := e.ctr("task", "exec", "--exec-id", "after", id, "echo", "served again"); strings.TrimSpace(res.Stdout) != "served again" {
		t.Fatalf("exec after starting over: %q", res.Stdout)
	}
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Fatalf("task %q after starting over", st)
	}

	// The binary is replaced on disk: the next quiet moment finds it so.
	next := buildTether(t, t.TempDir(), "containerd-shim-tether-v2", "v-next")
	if err := os.Rename(next, eager); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the exec's start over to be done with", 30*time.Second, func() bool { return startOvers() > before+1 })
	before = startOvers()
	e.ctr("task", "exec", "--exec-id", "replaced", id, "true")
	e.waitFor("the quiet shim to consider starting over", 30*time.Second, func() bool { return startOvers() > before })
	if !strings.Contains(e.ctd.FullLog(), "not starting over: the binary was replaced on disk") {
		t.Fatalf("the shim started over from a replaced binary:\n%s", e.ctd.Log())
	}
	if got, _ := os.Readlink(exe); got != eager+" (deleted)" {
		t.Fatalf("shim runs %q, want the replaced build", got)
	}
}
