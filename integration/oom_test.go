package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tether-shim/tether/integration/harness"
)

// The OOM tests: every OOM kill gives exactly one /tasks/oom, before the
// /tasks/exit of the container's init, with either cgroup driver (a systemd
// scope goes the moment its last process dies, and the kernel's notice of
// the kill with it), on both containerd generations; containerd's CRI calls
// each such container OOMKilled. Under TETHER_STRESS=1 they make 100 kills
// and count containerd's runc shim beside tether (never asserted: it loses
// OOM events under systemd, containerd/containerd#12714).

// oomCommand fills a 32 MiB container's memory until the kernel kills its
// init: dd reads /dev/zero into a 64 MiB buffer (fast even in a VM without
// KVM, where filling a shell variable takes seconds).
const oomLimit = 32 << 20

var oomCommand = []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"}

// oomKills is how many containers an OOM test kills, and how many at a
// time: ci one after another, or under TETHER_STRESS=1 stress (100 for
// tether), two at a time (a VM without KVM takes seconds per container;
// two kills at once also have the kernel rate-limit its OOM dumps).
func oomKills(ci, stress int) (n, width int) {
	if os.Getenv("TETHER_STRESS") != "" {
		return stress, 2
	}
	return ci, 1
}

// oomRunTimeout bounds one OOM-killed container's run: minutes, for a VM
// without KVM on a loaded machine is that slow (a hang guard, not a
// measure).
const oomRunTimeout = 5 * time.Minute

// inParallel calls f(0..n-1), width calls at a time.
func inParallel(n, width int, f func(i int)) {
	var wg sync.WaitGroup
	slots := make(chan struct{}, width)
	for i := range n {
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			f(i)
		}()
	}
	wg.Wait()
}

// runcRuntime is containerd's own runc shim.
const runcRuntime = "io.containerd.runc.v2"

// oomTally counts how the kills of a row were reported.
type oomTally struct {
	mu                               sync.Mutex
	kills, exit137, oneOOM, oomFirst int
	bad                              []string        // what went wrong, per container
	ids                              map[string]bool // the row's containers
}

func (o *oomTally) String() string {
	return fmt.Sprintf("kills=%d exit137=%d exactly-one-oom=%d oom-before-exit=%d", o.kills, o.exit137, o.oneOOM, o.oomFirst)
}

// fromKernelLog counts the row's kills that tether's exit path found in
// the kernel's log (its cgroup gone before its count was read), as its
// debug log in containerd's says.
func (o *oomTally) fromKernelLog(containerdLog string) int {
	data, _ := os.ReadFile(containerdLog)
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, "found in the kernel's log") {
			if id := oomRowID.FindString(line); id != "" && o.ids[id] {
				n++
			}
		}
	}
	return n
}

var oomRowID = regexp.MustCompile(`oom(row|gone)-[0-9]+-[0-9]+`)

// oomRun runs one container through runtime until the kernel kills it, and
// tallies its exit and its events.
func (e *env) oomRun(events *harness.Events, runtime string, o *oomTally) {
	id := e.id("oomrow")
	args := []string{"run", "--rm", "--memory-limit", strconv.Itoa(oomLimit), "--runtime", runtime}
	if runtime == runcRuntime && suite.driver == harness.Systemd {
		args = append(args, "--runc-systemd-cgroup") // tether reads SystemdCgroup from its options
	}
	args = append(args, harness.BusyboxImageName, id)
	args = append(args, oomCommand...)
	ctx, cancel := context.WithTimeout(context.Background(), oomRunTimeout)
	defer cancel()
	res, err := e.ctd.Ctr(ctx, nil, args...)
	// ctr run --rm returns once the task is deleted; its delete event is
	// the container's last, published by then. A run that did not return
	// has none to wait for (containerd's runc shim left two runs so on
	// containerd 2.4.2 in the VM, and the wait for their deletes outlasted
	// the suite's timeout).
	waited := fmt.Errorf("ctr run did not return within %v", oomRunTimeout)
	if ctx.Err() == nil {
		waited = events.WaitFor("/tasks/delete", time.Minute, eventOf(id))
	}
	topics := events.Matching(eventOf(id))
	one, first := oomEvents(topics)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ids == nil {
		o.ids = map[string]bool{}
	}
	o.ids[id] = true
	o.kills++
	if res.ExitCode == 137 {
		o.exit137++
	} else {
		o.bad = append(o.bad, fmt.Sprintf("%s: exit %d (%v)", id, res.ExitCode, err))
	}
	switch {
	case waited != nil:
		o.bad = append(o.bad, fmt.Sprintf("%s: %v", id, waited))
	case one && first:
		o.oneOOM++
		o.oomFirst++
	default:
		if one {
			o.oneOOM++
		}
		if first {
			o.oomFirst++
		}
		o.bad = append(o.bad, fmt.Sprintf("%s: events %v", id, topics))
	}
}

// oomEvents says whether the topics of a container's events (no exec's)
// hold one /tasks/oom (cgroup v2: one per kill, from memory.events'
// oom_kill count; v1 signals an eventfd on each OOM of the cgroup, which
// may come several times before the kill, and the shim reports each, as
// containerd's runc shim does), and whether they all come before the
// /tasks/exit.
func oomEvents(topics []string) (one, first bool) {
	ooms, last := 0, -1
	for i, t := range topics {
		if t == "/tasks/oom" {
			ooms, last = ooms+1, i
		}
	}
	exit := slices.Index(topics, "/tasks/exit")
	one = ooms == 1 || (ooms > 1 && !unifiedCgroups())
	return one, ooms > 0 && exit >= 0 && last < exit
}

// eventOf matches the events of container id in `ctr events` (exactly: an
// id is a prefix of a longer one).
func eventOf(id string) string {
	return `"container_id":"` + id + `"`
}

// TestOOMKillsInARow: containers OOM-killed one after another each give
// exactly one /tasks/oom, before their exit (137). 3 in CI, 100 under
// TETHER_STRESS=1, which also counts containerd's runc shim.
func TestOOMKillsInARow(t *testing.T) {
	e := setup(t)
	events, err := e.ctd.SubscribeEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	n, width := oomKills(3, 100)
	if os.Getenv("TETHER_STRESS") != "" {
		var runc oomTally
		inParallel(n, width, func(int) { e.oomRun(events, runcRuntime, &runc) })
		t.Logf("oom-count shim=runc-v2 containerd=%d driver=%s %s", e.ctd.Major, suite.driver, &runc)
		for _, b := range runc.bad {
			t.Logf("runc-v2: %s", b)
		}
	}
	var tether oomTally
	inParallel(n, width, func(int) { e.oomRun(events, harness.Runtime, &tether) })
	t.Logf("oom-count shim=tether containerd=%d driver=%s %s from-kernel-log=%d", e.ctd.Major, suite.driver, &tether, tether.fromKernelLog(e.ctd.LogPath))
	if len(tether.bad) > 0 {
		t.Fatalf("%d of %d kills misreported:\n%s", len(tether.bad), n, strings.Join(tether.bad, "\n"))
	}
}

// TestOOMOfACgroupRemovedRightAfterTheKill: the container's cgroup is
// removed as soon as the kill has emptied it, before anyone but the kernel
// read it (as systemd removes a scope, only sooner): the /tasks/oom still
// comes, once, before the /tasks/exit.
func TestOOMOfACgroupRemovedRightAfterTheKill(t *testing.T) {
	e := setup(t)
	events, err := e.ctd.SubscribeEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	id := e.id("oomgone")
	// The init waits for the go-ahead (a file in a directory of the
	// test's), so that the cgroup is watched for emptiness before the kill.
	trigger := t.TempDir()
	e.ctr("run", "-d", "--memory-limit", strconv.Itoa(oomLimit), "--mount", "type=bind,src="+trigger+",dst=/trigger,options=rbind:rw",
		"--runtime", harness.Runtime, harness.BusyboxImageName, id,
		"sh", "-c", "until [ -e /trigger/go ]; do sleep 0.05; done; exec "+strings.Join(oomCommand, " "))
	t.Cleanup(func() { e.remove(id) })
	dir := cgroupDir(t, e.initPid(id), "memory")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	removed := make(chan error, 1)
	go func() { removed <- removeOnceEmpty(ctx, dir) }()
	if err := os.WriteFile(filepath.Join(trigger, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-removed; err != nil {
		t.Fatalf("remove the container's cgroup: %v", err)
	}
	if err := events.WaitFor("/tasks/exit", 30*time.Second, eventOf(id)); err != nil {
		t.Fatal(err)
	}
	topics := events.Matching(eventOf(id))
	if one, first := oomEvents(topics); !one || !first {
		t.Fatalf("events %v: want one /tasks/oom, before the /tasks/exit", topics)
	}
	found := (&oomTally{ids: map[string]bool{id: true}}).fromKernelLog(e.ctd.LogPath)
	t.Logf("the kill was found in the kernel's log: %v", found > 0)
}

// removeOnceEmpty removes the cgroup dir the moment it has no process
// left (rmdir fails with EBUSY until then); one that systemd removed
// first is removed too.
func removeOnceEmpty(ctx context.Context, dir string) error {
	for {
		err := unix.Rmdir(dir)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
			return nil
		case !errors.Is(err, unix.EBUSY):
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s still has processes: %w", dir, ctx.Err())
		case <-time.After(200 * time.Microsecond): // polling a condition the kernel does not announce sooner
		}
	}
}

// TestCRIOOMKilled: through the CRI, a pod's containers OOM-killed one
// after another are each reported OOMKilled (exit 137) the first time
// their status says EXITED, as the kubelet would read it. 2 in CI, 100
// under TETHER_STRESS=1, which also counts 20 through containerd's runc
// shim (a handler "runc-oom" with the suite's driver).
func TestCRIOOMKilled(t *testing.T) {
	runcShim := ""
	if d := os.Getenv("TETHER_CONTAINERD_DIR"); d != "" {
		runcShim = filepath.Join(d, "containerd-shim-runc-v2") // 2.x's own
	}
	c := startCRI(t, func(string) harness.Handler {
		return harness.Handler{Name: "runc-oom", Type: runcRuntime, Path: runcShim, Options: suite.driver.OptionLine()}
	})
	rows := map[string]int{"tether": 0}
	if os.Getenv("TETHER_STRESS") != "" {
		rows["runc-oom"] = 20
	}
	for handler, stress := range rows {
		if stress == 0 {
			stress = 100
		}
		n, width := oomKills(2, stress)
		// Only tether's row is asserted: what goes wrong with the runc
		// shim's is reported, not failed.
		report := t.Errorf
		if handler != "tether" {
			report = t.Logf
		}
		ok, firstReasons := c.criOOMRow(handler, n, width, report)
		t.Logf("cri-oom-count handler=%s containerd=%d driver=%s kills=%d oomkilled-at-first-exited=%d reasons=%v", handler, c.ctd.Major, suite.driver, n, ok, firstReasons)
		if handler == "tether" && ok != n {
			t.Errorf("%d of %d OOM-killed containers were first reported EXITED with another reason: %v", n-ok, n, firstReasons)
		}
	}
}

// criOOMRow runs a pod with handler and n containers in it, width at a
// time, each OOM-killed: how many were OOMKilled (with exit 137) the first
// time their status said EXITED, and the reasons seen then. What goes
// wrong with a container goes to report.
func (c *criEnv) criOOMRow(handler string, n, width int, report func(string, ...any)) (ok int, reasons map[string]int) {
	t := c.t
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(n)*oomRunTimeout)
	defer cancel()
	cfg := c.sandboxConfig("oom-"+handler, t.TempDir())
	sb, err := c.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		t.Fatalf("run pod sandbox (%s): %v", handler, err)
	}
	sandbox := sb.GetPodSandboxId()
	defer func() {
		c.runtime.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox})
		c.runtime.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox})
	}()
	reasons = map[string]int{}
	var mu sync.Mutex
	inParallel(n, width, func(i int) {
		name := fmt.Sprintf("oom-%d", i)
		resp, err := c.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId:  sandbox,
			SandboxConfig: cfg,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: name},
				Image:    &runtimeapi.ImageSpec{Image: harness.BusyboxImageName},
				Command:  oomCommand,
				LogPath:  name + ".log",
				Linux: &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{
					MemoryLimitInBytes: oomLimit, MemorySwapLimitInBytes: oomLimit,
				}},
			},
		})
		if err != nil {
			report("create container %s: %v", name, err)
			return
		}
		id := resp.GetContainerId()
		if _, err := c.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
			report("start container %s: %v", name, err)
			return
		}
		st, err := c.firstExited(ctx, id)
		if err != nil {
			report("%v", err)
			return
		}
		mu.Lock()
		reasons[fmt.Sprintf("%s/%d", st.GetReason(), st.GetExitCode())]++
		if st.GetReason() == "OOMKilled" && st.GetExitCode() == 137 {
			ok++
		}
		mu.Unlock()
		if _, err := c.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			report("remove container %s: %v", name, err)
		}
	})
	return ok, reasons
}

// firstExited polls id's status, as a kubelet would, until it says
// EXITED, and returns that first EXITED status.
func (c *criEnv) firstExited(ctx context.Context, id string) (*runtimeapi.ContainerStatus, error) {
	for {
		resp, err := c.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			return nil, fmt.Errorf("status of %s: %w", id, err)
		}
		if st := resp.GetStatus(); st.GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s never exited: %w", id, ctx.Err())
		case <-time.After(10 * time.Millisecond): // polling, as the kubelet's PLEG does
		}
	}
}
