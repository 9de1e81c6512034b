package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tether-shim/tether/integration/bench/procmem"
	"github.com/tether-shim/tether/integration/bench/results"
	"github.com/tether-shim/tether/integration/harness"
)

// podRuntimes are the CRI handlers compared for pods, on containerd 2.x:
// tether holding the pod itself (sandbox API, no pause container) against
// containerd's runc shim with a pause container. A tether pod whose
// containers have a pid namespace each (Kubernetes' default) has no
// process of its own; one whose containers share one has a holder, that
// namespace's init, measured as "tether (shared pid)".
var podRuntimes = []struct {
	name, handler, shim string
	// pid is the pod's pid namespaces, and its container's; perPodOnly:
	// its idle pods go up to the per-pod figure's scale point only.
	pid        runtimeapi.NamespaceMode
	perPodOnly bool
}{
	{results.Tether, harness.PauselessHandler, "containerd-shim-tether-v2", runtimeapi.NamespaceMode_CONTAINER, false},
	{results.TetherSharedPid, harness.PauselessHandler, "containerd-shim-tether-v2", runtimeapi.NamespaceMode_POD, true},
	{results.Runc, "runc", "containerd-shim-runc-v2", runtimeapi.NamespaceMode_CONTAINER, false},
}

type podConfig struct {
	containerd2 string // directory with containerd, ctr and containerd-shim-runc-v2
	timed       int    // pods started and removed per runtime, timed
	scale       []int  // numbers of idle pods per runtime to sample memory at
	idle        int    // the scale point whose pods give the per-pod figure
}

// podBench is a private containerd 2.x with its CRI plugin on, a pod
// network on this machine only, and both handlers.
type podBench struct {
	c       config
	ctd     *harness.Containerd
	runtime runtimeapi.RuntimeServiceClient
	seq     int
}

// pod is a running pod and its one container.
type pod struct {
	sandbox, container string
}

// pods measures pod start, and idle pods' memory up to the largest scale
// point, on containerd 2.x, the two runtimes alternating.
func (b *bench) pods(s *results.Samples) error {
	dir := filepath.Join(b.c.tmp, "pods")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	pb, cleanup, err := startPodBench(b.c, b.bins, dir)
	if err != nil {
		return err
	}
	defer cleanup()
	s.Versions["containerd (pods)"] = firstLine(pb.ctd.ContainerdBinary, "--version")
	s.Versions["runc-v2 shim (pods)"] = firstLine(b.bins.runc2, "-v", "Version:")
	s.Pods = map[string]*results.PodSamples{}
	for _, rt := range podRuntimes {
		s.Pods[rt.name] = &results.PodSamples{}
	}
	ctx := context.Background()
	for i := 0; i < b.c.pod.timed; i++ {
		for _, rt := range podRuntimes {
			p, run, first, err := pb.startPod(ctx, rt.handler, rt.pid)
			if err != nil {
				return fmt.Errorf("%s: %w", rt.name, err)
			}
			s.Pods[rt.name].RunPodSandboxMs = append(s.Pods[rt.name].RunPodSandboxMs, ms(run))
			s.Pods[rt.name].FirstContainerMs = append(s.Pods[rt.name].FirstContainerMs, ms(first))
			if err := pb.removePod(ctx, p.sandbox); err != nil {
				return err
			}
		}
	}
	var all []pod
	defer func() { pb.removeAll(ctx, all) }()
	podsOf := map[string][]pod{}
	var idleSince time.Time
	for _, point := range b.c.pod.scale {
		for len(podsOf[results.Tether]) < point {
			for _, rt := range podRuntimes {
				if rt.perPodOnly && point > b.c.pod.idle {
					continue
				}
				p, _, _, err := pb.startPod(ctx, rt.handler, rt.pid)
				if err != nil {
					return fmt.Errorf("%s: %w", rt.name, err)
				}
				all = append(all, p)
				podsOf[rt.name] = append(podsOf[rt.name], p)
			}
		}
		if point == b.c.pod.idle {
			idleSince = time.Now()
		}
		time.Sleep(b.c.settle)
		mems, err := pb.sample(ctx, podsOf)
		if err != nil {
			return err
		}
		for _, rt := range podRuntimes {
			if len(podsOf[rt.name]) != point {
				continue // perPodOnly, past its last point
			}
			ps := s.Pods[rt.name]
			var total procmem.Usage
			processes := 0
			for _, m := range mems[rt.name] {
				total = total.Plus(m.Total())
				processes += 1 + len(m.Others)
			}
			ps.Scale = append(ps.Scale, results.ScalePoint{N: point, Processes: processes, Total: total})
			log.Printf("pods: %s, %d idle pods: %d processes, %+v", rt.name, point, processes, total)
			if point == b.c.pod.idle {
				ps.Idle = mems[rt.name]
			}
		}
		if point != b.c.pod.idle {
			continue
		}
		// The same pods again once old enough to be past their start:
		// containerd polls each pod's statistics every second or two.
		time.Sleep(time.Until(idleSince.Add(b.c.steady)))
		if mems, err = pb.sample(ctx, podsOf); err != nil {
			return err
		}
		for _, rt := range podRuntimes {
			s.Pods[rt.name].Steady, s.Pods[rt.name].SteadyAge = mems[rt.name], b.c.steady.String()
		}
	}
	return nil
}

// sample reads the memory of every pod's runtime processes, by runtime.
func (pb *podBench) sample(ctx context.Context, podsOf map[string][]pod) (map[string][]results.PodMemory, error) {
	tree := procmem.ReadTree()
	mems := map[string][]results.PodMemory{}
	for _, rt := range podRuntimes {
		for _, p := range podsOf[rt.name] {
			m, err := pb.podMemory(ctx, tree, p, rt.shim)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", rt.name, err)
			}
			mems[rt.name] = append(mems[rt.name], m)
		}
	}
	return mems, nil
}

// startPodBench starts containerd 2.x for the pod figures.
func startPodBench(c config, bins binaries, dir string) (*podBench, func(), error) {
	for _, bin := range []string{"containerd", "ctr"} {
		if _, err := os.Stat(filepath.Join(c.pod.containerd2, bin)); err != nil {
			return nil, nil, fmt.Errorf("containerd 2.x (make containerd2): %w", err)
		}
	}
	confDir, bridge, err := writeCNI(dir)
	if err != nil {
		return nil, nil, err
	}
	removeBridge := func() { exec.Command("ip", "link", "delete", bridge).Run() }
	opts := harness.Options{ShimDir: bins.shims, Dir: dir, Namespace: "k8s.io", EnableCRI: true,
		ContainerdBinary: filepath.Join(c.pod.containerd2, "containerd"), CtrBinary: filepath.Join(c.pod.containerd2, "ctr")}
	opts.ExtraConfig = harness.CRIConfig(2, harness.CRISettings{Pauseless: true, CNIBinDir: "/usr/lib/cni", CNIConfDir: confDir,
		RuncShim: bins.runc2})
	ctd, err := harness.Start(opts)
	if err != nil {
		removeBridge()
		return nil, nil, err
	}
	conn, err := grpc.NewClient("unix://"+ctd.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		ctd.Stop()
		removeBridge()
		return nil, nil, err
	}
	cleanup := func() {
		conn.Close()
		ctd.Stop()
		removeBridge()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = ctd.ImportBusybox(ctx, c.busybox)
	if err == nil {
		err = importPause(ctx, ctd, dir)
	}
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return &podBench{c: c, ctd: ctd, runtime: runtimeapi.NewRuntimeServiceClient(conn)}, cleanup, nil
}

// writeCNI writes a bridge + host-local network of its own (no address on
// the host, no masquerading: traffic stays on the machine).
func writeCNI(dir string) (confDir, bridge string, err error) {
	bridge = fmt.Sprintf("ttb%d", os.Getpid()%1000000)
	confDir = filepath.Join(dir, "net.d")
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "tether-bench", "plugins": [{"type": "bridge", "bridge": %q,
  "isGateway": false, "ipMasq": false, "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.198.0.0/16"}]]}}]}`,
		bridge, filepath.Join(dir, "cni-ipam"))
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return "", "", err
	}
	return confDir, bridge, os.WriteFile(filepath.Join(confDir, "10-bench.conflist"), []byte(conf), 0o644)
}

// importPause imports a pause image whose process is a small static C
// program, as Kubernetes' pause is (the Go pause of the tests would
// overstate the pause container's memory).
func importPause(ctx context.Context, ctd *harness.Containerd, dir string) error {
	bin := filepath.Join(dir, "pause")
	if out, err := exec.Command("gcc", "-static", "-Os", "-s", "-o", bin, "integration/testdata/cpause/pause.c").CombinedOutput(); err != nil {
		return fmt.Errorf("build pause: %v: %s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	layer, err := harness.FileLayer("pause", data)
	if err != nil {
		return err
	}
	tar := filepath.Join(dir, "pause-oci.tar")
	if err := harness.WriteImage(tar, harness.PauseImageName, layer, []string{"/pause"}); err != nil {
		return err
	}
	_, err = ctd.Ctr(ctx, nil, "images", "import", tar)
	return err
}

// startPod runs a pod with one idle container through handler, their pid
// namespaces as pid says, and says how long RunPodSandbox took and how
// long until the container ran.
func (pb *podBench) startPod(ctx context.Context, handler string, pid runtimeapi.NamespaceMode) (p pod, run, first time.Duration, err error) {
	pb.seq++
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: fmt.Sprintf("bench-%d", pb.seq), Uid: fmt.Sprintf("uid-%d-%d", os.Getpid(), pb.seq), Namespace: "bench"},
		Hostname: "bench",
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Pid: pid},
		}},
	}
	start := time.Now()
	sb, err := pb.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		return pod{}, 0, 0, fmt.Errorf("run pod sandbox: %w", err)
	}
	run = time.Since(start)
	id := sb.GetPodSandboxId()
	c, err := pb.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: id, SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "idle"},
			Image:    &runtimeapi.ImageSpec{Image: harness.BusyboxImageName},
			Command:  []string{"sleep", "1000000"},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Pid: pid},
			}},
		}})
	if err == nil {
		_, err = pb.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.GetContainerId()})
	}
	if err != nil {
		pb.removePod(ctx, id)
		return pod{}, 0, 0, fmt.Errorf("first container: %w", err)
	}
	return pod{sandbox: id, container: c.GetContainerId()}, run, time.Since(start), nil
}

// removeAll removes pods a few at a time: one by one, 400 pods took a
// quarter of an hour on a loaded machine (each tears down a network
// namespace and its CNI port).
func (pb *podBench) removeAll(ctx context.Context, pods []pod) {
	const parallel = 8
	work := make(chan pod)
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				pb.removePod(ctx, p.sandbox)
			}
		}()
	}
	for _, p := range pods {
		work <- p
	}
	close(work)
	wg.Wait()
}

// removePod stops and removes a pod with its containers.
func (pb *podBench) removePod(ctx context.Context, id string) error {
	if _, err := pb.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("stop pod: %w", err)
	}
	if _, err := pb.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("remove pod: %w", err)
	}
	return nil
}

// podMemory is the memory of p's runtime processes: its shim (the one
// serving the sandbox's id) and every process below the shim but the
// container's (a pause process, a holder), whatever the pod is made of.
func (pb *podBench) podMemory(ctx context.Context, tree procmem.Tree, p pod, shimBinary string) (results.PodMemory, error) {
	var m results.PodMemory
	shim, err := shimFor(shimBinary, p.sandbox)
	if err != nil {
		return m, err
	}
	workload, err := pb.containerPid(ctx, p.container)
	if err != nil {
		return m, err
	}
	skip := map[int]bool{workload: true}
	for _, pid := range tree.Descendants(workload) {
		skip[pid] = true
	}
	var ok bool
	if m.Shim, ok = procmem.Of(shim); !ok {
		return m, fmt.Errorf("pod %s: shim %d gone", p.sandbox, shim)
	}
	var others []int
	for _, pid := range tree.Descendants(shim) {
		if !skip[pid] {
			others = append(others, pid)
		}
	}
	m.Others = procmem.All(others)
	return m, nil
}

// containerPid is the pid of a container's process, from its verbose CRI
// status.
func (pb *podBench) containerPid(ctx context.Context, id string) (int, error) {
	st, err := pb.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		return 0, fmt.Errorf("container status: %w", err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil || info.Pid == 0 {
		return 0, fmt.Errorf("container %s: no pid in its status (%v)", id, err)
	}
	return info.Pid, nil
}
