package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

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
	sandbox             string                   // argv[0] of the pod's own process; "" for none
	pid                 runtimeapi.NamespaceMode // the pod's pid namespaces, and its container's
}{
	{"tether", harness.PauselessHandler, "containerd-shim-tether-v2", "", runtimeapi.NamespaceMode_CONTAINER},
	{"tether (shared pid)", harness.PauselessHandler, "containerd-shim-tether-v2", "tether-holder", runtimeapi.NamespaceMode_POD},
	{"runc-v2", "runc", "containerd-shim-runc-v2", "/pause", runtimeapi.NamespaceMode_CONTAINER},
}

// PodSamples are one runtime's pod figures.
type PodSamples struct {
	RunPodSandboxMs  []float64   `json:"run_pod_sandbox_ms"`
	FirstContainerMs []float64   `json:"pod_start_to_first_container_running_ms"`
	Memory           []PodMemory `json:"idle_pod_memory"`
}

// PodMemory is an idle pod's shim and its pause process (or holder; none
// for a tether pod without one).
type PodMemory struct {
	Shim    ShimMemory `json:"shim"`
	Sandbox ShimMemory `json:"sandbox_process"`
}

// podBench is a private containerd 2.x with its CRI plugin on, a pod
// network on this machine only, and both handlers.
type podBench struct {
	c       config
	ctd     *harness.Containerd
	runtime runtimeapi.RuntimeServiceClient
	seq     int
}

// pods measures pod start and idle pod memory on containerd 2.x, the two
// runtimes alternating.
func (b *bench) pods(s *Samples) error {
	dir, err := os.MkdirTemp("", "tether-bench-pods-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	pb, cleanup, err := startPodBench(b.c, dir)
	if err != nil {
		return err
	}
	defer cleanup()
	s.Versions["containerd (pods)"] = firstLine(pb.ctd.ContainerdBinary, "--version")
	s.Versions["runc-v2 shim (pods)"] = firstLine(filepath.Join(b.c.containerd2, "containerd-shim-runc-v2"), "-v", "Version:")
	s.Pods = map[string]*PodSamples{}
	for _, rt := range podRuntimes {
		s.Pods[rt.name] = &PodSamples{}
	}
	ctx := context.Background()
	for i := 0; i < b.c.pods; i++ {
		for _, rt := range podRuntimes {
			id, run, first, err := pb.startPod(ctx, rt.handler, rt.pid)
			if err != nil {
				return fmt.Errorf("%s: %w", rt.name, err)
			}
			s.Pods[rt.name].RunPodSandboxMs = append(s.Pods[rt.name].RunPodSandboxMs, ms(run))
			s.Pods[rt.name].FirstContainerMs = append(s.Pods[rt.name].FirstContainerMs, ms(first))
			if err := pb.removePod(ctx, id); err != nil {
				return err
			}
		}
	}
	var ids []string
	defer func() {
		for _, id := range ids {
			pb.removePod(ctx, id)
		}
	}()
	podsOf := map[string][]string{}
	for i := 0; i < b.c.idlePods; i++ {
		for _, rt := range podRuntimes {
			id, _, _, err := pb.startPod(ctx, rt.handler, rt.pid)
			if err != nil {
				return fmt.Errorf("%s: %w", rt.name, err)
			}
			ids = append(ids, id)
			podsOf[rt.name] = append(podsOf[rt.name], id)
		}
	}
	time.Sleep(b.c.settle)
	for _, rt := range podRuntimes {
		for _, id := range podsOf[rt.name] {
			m, err := podMemory(id, rt.shim, rt.sandbox)
			if err != nil {
				return fmt.Errorf("%s: %w", rt.name, err)
			}
			s.Pods[rt.name].Memory = append(s.Pods[rt.name].Memory, m)
		}
		log.Printf("pods: %s: RunPodSandbox p50 %.1f ms, first container p50 %.1f ms, idle pod RSS %.0f KiB, PSS %.0f KiB", rt.name,
			percentile(s.Pods[rt.name].RunPodSandboxMs, 0.5), percentile(s.Pods[rt.name].FirstContainerMs, 0.5),
			podMemStat(s.Pods[rt.name].Memory, false), podMemStat(s.Pods[rt.name].Memory, true))
	}
	return nil
}

// startPodBench starts containerd 2.x for the pod figures.
func startPodBench(c config, dir string) (*podBench, func(), error) {
	for _, bin := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		if _, err := os.Stat(filepath.Join(c.containerd2, bin)); err != nil {
			return nil, nil, fmt.Errorf("containerd 2.x (make containerd2): %w", err)
		}
	}
	confDir, bridge, err := writeCNI(dir)
	if err != nil {
		return nil, nil, err
	}
	removeBridge := func() { exec.Command("ip", "link", "delete", bridge).Run() }
	shimDir, err := filepath.Abs(c.shimDir)
	if err != nil {
		return nil, nil, err
	}
	opts := harness.Options{ShimDir: shimDir, Dir: dir, Namespace: "k8s.io", EnableCRI: true,
		ContainerdBinary: filepath.Join(c.containerd2, "containerd"), CtrBinary: filepath.Join(c.containerd2, "ctr")}
	opts.ExtraConfig = harness.CRIConfig(2, harness.CRISettings{Pauseless: true, CNIBinDir: "/usr/lib/cni", CNIConfDir: confDir,
		RuncShim: filepath.Join(c.containerd2, "containerd-shim-runc-v2")})
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
func (pb *podBench) startPod(ctx context.Context, handler string, pid runtimeapi.NamespaceMode) (id string, run, first time.Duration, err error) {
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
		return "", 0, 0, fmt.Errorf("run pod sandbox: %w", err)
	}
	run = time.Since(start)
	id = sb.GetPodSandboxId()
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
		return "", 0, 0, fmt.Errorf("first container: %w", err)
	}
	return id, run, time.Since(start), nil
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

// podMemory is the memory of pod id's shim and of its pause process (or
// holder), a child of the shim named sandbox ("": it has none).
func podMemory(id, shimBinary, sandbox string) (PodMemory, error) {
	var m PodMemory
	for _, pid := range harness.Pids() {
		args := harness.Cmdline(pid)
		if filepath.Base(args[0]) != shimBinary || !hasArg(args, "-id", id) {
			continue
		}
		m.Shim = memoryOf(pid)
		for _, child := range harness.Pids() {
			if sandbox != "" && parent(child) == pid && harness.Cmdline(child)[0] == sandbox {
				m.Sandbox = memoryOf(child)
			}
		}
	}
	if m.Shim.Pid == 0 || (sandbox != "" && m.Sandbox.Pid == 0) {
		return m, fmt.Errorf("pod %s: shim %d, %s %d", id, m.Shim.Pid, sandbox, m.Sandbox.Pid)
	}
	return m, nil
}

func hasArg(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}

func podMemStat(pods []PodMemory, pss bool) float64 {
	var xs []float64
	for _, p := range pods {
		if pss {
			xs = append(xs, float64(p.Shim.PSSKiB+p.Sandbox.PSSKiB))
		} else {
			xs = append(xs, float64(p.Shim.RSSKiB+p.Sandbox.RSSKiB))
		}
	}
	return median(xs)
}

// firstLine is the first line of name's output that contains want (or
// the first line), "unknown" if it fails.
func firstLine(name string, args ...string) string {
	want := ""
	if n := len(args); n > 0 && strings.HasSuffix(args[n-1], ":") {
		want, args = args[n-1], args[:n-1]
	}
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "unknown"
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, l := range lines {
		if want != "" && strings.Contains(l, want) {
			return strings.TrimSpace(l)
		}
	}
	return strings.TrimSpace(lines[0])
}
