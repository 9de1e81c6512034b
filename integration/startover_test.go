package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestStartOverWhenQuiet: with starting over on (here a build that starts
// over at every quiet moment after its baseline), a quiet shim that has
// grown starts over in a fresh process of its own binary, in place: same
// pid, same binary, its container still served. Off (the default), a shim
// never does.
// Once the binary on disk was replaced, it no longer starts over: that
// would be an upgrade, the operator's call.
func TestStartOverWhenQuiet(t *testing.T) {
	e := setup(t)
	id := e.id("startover")
	e.runDetached(id, "sleep", "100000")
	shim := shimsFor(id)[0].pid
	count := func(msg string) int {
		return strings.Count(e.ctd.FullLog(), fmt.Sprintf("msg=%s runtime=io.containerd.tether.v2 namespace=%s pid=%d", msg, e.ctd.Namespace, shim))
	}
	t.Cleanup(func() {
		if t.Failed() { // what the shim decided at its quiet moments
			var lines []string
			for _, l := range strings.Split(e.ctd.FullLog(), "\n") {
				if strings.Contains(l, fmt.Sprintf("pid=%d", shim)) && (strings.Contains(l, "over") || strings.Contains(l, "msg=quiet")) {
					lines = append(lines, l)
				}
			}
			t.Logf("the shim's quiet moments:\n%s", strings.Join(lines, "\n"))
		}
	})
	const startingOver, carriedOn = `"starting over to hand back memory"`, `"carrying on after a live upgrade"`
	exec := func(execID string) {
		t.Helper()
		if res := e.ctr("task", "exec", "--exec-id", execID, id, "echo", "served"); strings.TrimSpace(res.Stdout) != "served" {
			t.Fatalf("exec %s: %q", execID, res.Stdout)
		}
	}
	// quietAfter runs an exec and waits for the shim's next quiet moment.
	quietAfter := func(execID string) {
		t.Helper()
		quiet := count("quiet")
		exec(execID)
		e.waitFor("the shim's next quiet moment", 2*time.Minute, func() bool { return count("quiet") > quiet })
	}

	exec("first")

	eager := buildTether(t, t.TempDir(), "containerd-shim-tether-v2", "v-startover", "github.com/tether-shim/tether/daemon.testStartOver=yes")
	// Starting over is off by default: the shim, idle while the build
	// ran, never considered it.
	if count(startingOver) != 0 || count("quiet") != 0 {
		t.Fatalf("the default build considered starting over:\n%s", e.ctd.Log())
	}
	if out, err := upgradeShims(t, eager, "-namespace", e.ctd.Namespace, "-id", id, "-binary", eager); err != nil {
		t.Fatalf("upgrade onto the eager build: %v: %s", err, out)
	}
	// A process that carries a shim on takes its baseline at its first
	// quiet moment, without starting over.
	quietAfter("baseline")
	baseline := lastBaseline(t, e.ctd.FullLog(), shim)
	startOvers, carried := count(startingOver), count(carriedOn)
	exec("grow")
	e.waitFor("the quiet shim to start over", 2*time.Minute, func() bool {
		return count(startingOver) > startOvers && count(carriedOn) > carried
	})
	if log := e.ctd.FullLog(); strings.Contains(log, "could not start over") {
		t.Fatalf("a start over failed:\n%s", e.ctd.Log())
	}
	if p := shimsFor(id); len(p) != 1 || p[0].pid != shim {
		t.Fatalf("shims after starting over: %v, want pid %d", p, shim)
	}
	exe := filepath.Join("/proc", strconv.Itoa(shim), "exe")
	if got, _ := os.Readlink(exe); got != eager {
		t.Fatalf("shim runs %s after starting over, want %s", got, eager)
	}
	// The process that carries on has the baseline handed over: a quiet
	// moment during work would not give the right one.
	quietAfter("after")
	if got := lastBaseline(t, e.ctd.FullLog(), shim); got != baseline {
		t.Fatalf("baseline %s after starting over, want %s handed over", got, baseline)
	}
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Fatalf("task %q after starting over", st)
	}

	// The binary is replaced on disk: the next quiet moments find it so
	// (the first after a start over only takes the baseline).
	next := buildTether(t, t.TempDir(), "containerd-shim-tether-v2", "v-next")
	if err := os.Rename(next, eager); err != nil {
		t.Fatal(err)
	}
	startOvers = count(startingOver)
	for i := 0; !regexp.MustCompile(`"not starting over, carrying on" .*the binary was replaced on disk`).MatchString(e.ctd.FullLog()); i++ {
		if i == 3 {
			t.Fatalf("the shim never considered starting over from a replaced binary:\n%s", e.ctd.Log())
		}
		quietAfter(fmt.Sprintf("replaced-%d", i))
	}
	if count(startingOver) != startOvers {
		t.Fatal("the shim started over from a replaced binary")
	}
	if got, _ := os.Readlink(exe); got != eager+" (deleted)" {
		t.Fatalf("shim runs %q, want the replaced build", got)
	}
}

// lastBaseline is the baseline of the last quiet moment shim logged.
func lastBaseline(t *testing.T, log string, shim int) string {
	t.Helper()
	m := regexp.MustCompile(fmt.Sprintf(`msg=quiet .* pid=%d .*baseline_kib=(\d+)`, shim)).FindAllStringSubmatch(log, -1)
	if len(m) == 0 {
		t.Fatalf("shim %d logged no quiet moment", shim)
	}
	return m[len(m)-1][1]
}
