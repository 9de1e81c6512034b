package integration

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/proto/task"
)

// TestPodGroupSharesOneShim: containers annotated with the same group share
// one shim process and socket; their lifecycles, exits and events stay
// apart; the shim exits with the last of them.
func TestPodGroupSharesOneShim(t *testing.T) {
	e := setup(t)
	group := e.id("pod")
	a, b := group+"-a", group+"-b"
	events, err := e.ctd.SubscribeEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	for _, id := range []string{a, b} {
		e.ctr("run", "-d", "--annotation", "io.containerd.tether.v2.group="+group, "--runtime", harness.Runtime,
			harness.BusyboxImageName, id, "sh", "-c", "trap 'exit 3' TERM; while true; do sleep 0.1; done")
		t.Cleanup(func() { e.remove(id) })
	}
	addrA, _ := e.ctd.ShimAddress(a)
	addrB, _ := e.ctd.ShimAddress(b)
	if addrA == "" || addrA != addrB {
		t.Fatalf("shim addresses %q and %q, want one shared", addrA, addrB)
	}
	shims := shimsFor(a)
	if len(shims) != 1 || len(shimsFor(b)) != 0 {
		t.Fatalf("shim processes: for %s %v, for %s %v; want one, started for the first", a, shims, b, shimsFor(b))
	}
	client, err := harness.DialShimAddress(addrA)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{a, b} {
		resp, err := client.Connect(context.Background(), &task.ConnectRequest{Id: id})
		if err != nil || int(resp.GetShimPid()) != shims[0].pid || resp.GetTaskPid() == 0 {
			client.Close()
			t.Fatalf("connect %s: %v %v", id, resp, err)
		}
	}
	// A client left connected holds an exiting shim back (up to 2 s).
	client.Close()

	// Stopping one leaves the other alone.
	e.ctr("task", "kill", "-s", "SIGTERM", a)
	e.waitFor(a+" to stop", 20*time.Second, func() bool { return e.taskStatus(a) == "STOPPED" })
	if st := e.taskStatus(b); st != "RUNNING" {
		t.Fatalf("%s is %q after %s stopped", b, st, a)
	}
	if err := events.WaitFor("/tasks/exit", 10*time.Second, `"container_id":"`+a+`"`); err != nil {
		t.Fatal(err)
	}
	if exits := events.Matching(`"container_id":"`+b+`"`, "/tasks/exit"); len(exits) != 0 {
		t.Fatalf("exit events for the running %s: %v", b, exits)
	}
	e.ctr("task", "rm", a)
	e.ctr("container", "rm", a)
	if len(shimsFor(a)) != 1 {
		t.Fatal("shim exited while a container of its group still runs")
	}
	res := e.ctr("task", "exec", "--exec-id", "x", b, "echo", "still served")
	if res.Stdout != "still served\n" {
		t.Fatalf("exec into %s: %q", b, res.Stdout)
	}

	e.remove(b)
	e.waitFor("shim to exit with its last container", 10*time.Second, func() bool { return len(shimsFor(a)) == 0 })
	if _, err := os.Stat(strings.TrimPrefix(addrA, "unix://")); !os.IsNotExist(err) {
		t.Fatalf("socket %s left behind: %v", addrA, err)
	}
}
