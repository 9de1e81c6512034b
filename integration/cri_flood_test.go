package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIStopsOutputFloods: a pod whose containers write to their CRI log
// as fast as they can (and two that write to disk), stopped the way the
// kubelet stops them: all at once, each with a 5 s grace period their
// init ignores. Every stop must end with the kill: containerd deletes a
// task only once the shim has closed its output fifos, and a pump that
// missed its source's end while the fifo was full (a pipe-to-pipe splice
// answers EAGAIN there, not 0) never closed them: the container stayed
// RUNNING, the pod could not be removed, and the shim, mounts and cgroups
// stayed until it was killed by hand. containerd's runc shim stops every
// one of them in 5-6 s.
func TestCRIStopsOutputFloods(t *testing.T) {
	c := startCRI(t)
	runs := 2
	if stress() {
		runs = 20
	}
	for run := range runs {
		c.floodAndStop(run)
	}
}

// floodAndStop runs one flooded pod, stops and removes it.
func (c *criEnv) floodAndStop(run int) {
	t := c.t
	// The logs grow by hundreds of MB a second: each run cleans its own.
	logDir, err := os.MkdirTemp("", "tether-flood-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(logDir)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := c.sandboxConfig(fmt.Sprintf("flood-%d", run), logDir)
	sb, err := c.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: "tether"})
	if err != nil {
		t.Fatalf("run %d: run pod sandbox: %v", run, err)
	}
	sandbox := sb.GetPodSandboxId()
	var floods, ids []string
	for i := range 4 {
		name := fmt.Sprintf("flood%d", i)
		floods = append(floods, name)
		ids = append(ids, c.createContainer(ctx, sandbox, cfg, name, "yes", "an output flood that fills the CRI log"))
	}
	for i := range 2 {
		ids = append(ids, c.createContainer(ctx, sandbox, cfg, fmt.Sprintf("disk%d", i),
			"sh", "-c", "while :; do dd if=/dev/zero of=/tmp/f bs=1M count=16 2>/dev/null; done"))
	}
	c.waitFor("every flood to reach its log", time.Minute, func() bool {
		for _, name := range floods {
			if st, err := os.Stat(filepath.Join(logDir, name+".log")); err != nil || st.Size() < 1<<20 {
				return false
			}
		}
		return true
	})
	// The kubelet stops a pod's containers in parallel.
	errs := make(chan error, len(ids))
	for _, id := range ids {
		go func() {
			_, err := c.runtime.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 5})
			if err != nil {
				err = fmt.Errorf("stop %s: %w", id, err)
			}
			errs <- err
		}()
	}
	for range ids {
		if err := <-errs; err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
	}
	for _, id := range ids {
		st, err := c.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil || st.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_EXITED {
			t.Fatalf("run %d: %s after its stop: %v %v", run, id, st.GetStatus().GetState(), err)
		}
		if _, err := c.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("run %d: remove %s: %v", run, id, err)
		}
	}
	if _, err := c.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("run %d: stop pod: %v", run, err)
	}
	if _, err := c.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("run %d: remove pod: %v", run, err)
	}
	c.waitFor("the pod's shim to exit", time.Minute, func() bool { return len(shimsFor(sandbox)) == 0 })
	if m := mountsMatching(sandbox); len(m) > 0 {
		t.Fatalf("run %d: mounts left: %v", run, m)
	}
}
