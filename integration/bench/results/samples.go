// Package results holds what one run of the bench measured (the samples,
// written as samples.json) and renders it: the Markdown table of
// results.md, with each target met or not, and the density charts (SVG).
package results

import (
	"slices"

	"github.com/tether-shim/tether/integration/bench/procmem"
)

// The runtimes compared, and the floor programs measured beside them.
const (
	Tether = "tether"
	Runc   = "runc-v2"
	// TetherSharedPid is tether's pod whose containers share one pid
	// namespace: it keeps a holder, that namespace's init (pods only).
	TetherSharedPid = "tether (shared pid)"
	// Floor is an idle ttrpc server that registers the task API (v2 and
	// v3), built as tether is: what any Go shim of containerd's task API
	// costs idle at least. The targets are set against it.
	Floor = "floor"
	// FloorTTRPC is the same server without the task API.
	FloorTTRPC = "floor-ttrpc"
	// GoSleep is a Go program that only sleeps: the Go runtime alone.
	GoSleep = "go-sleep"
)

// Measured lists the processes of an idle sample in the table's order.
var Measured = []string{Tether, Runc, Floor, FloorTTRPC, GoSleep}

// Samples are everything one run measured.
type Samples struct {
	Date     string            `json:"date"`
	Machine  string            `json:"machine"`
	Versions map[string]string `json:"versions"`
	// Idle are the idle shims and the floor programs, sampled at each age.
	Idle []IdleSample `json:"idle,omitempty"`
	// Containers is the total memory of each runtime's shims against the
	// number of idle containers (one shim each).
	Containers map[string][]ScalePoint `json:"containers_at_scale,omitempty"`
	// Growth is one shim per runtime before and after a round of work.
	Growth map[string]*Growth `json:"growth,omitempty"`
	// Lifecycle and Exec are latencies in ms; Stdout in MB/s; CPU the
	// shims' CPU time in ms over the lifecycle runs.
	Lifecycle map[string][]float64 `json:"lifecycle_ms,omitempty"`
	Exec      map[string][]float64 `json:"exec_ms,omitempty"`
	Stdout    map[string]float64   `json:"stdout_mb_per_s,omitempty"`
	CPU       map[string]float64   `json:"shim_cpu_ms_over_lifecycle,omitempty"`
	// Pods are the pod figures on containerd 2.x: tether without a pause
	// container against runc-v2 with one.
	Pods map[string]*PodSamples `json:"pods,omitempty"`
	// UpgradePauseMs are the pauses of tether's live upgrades.
	UpgradePauseMs []float64 `json:"upgrade_pause_ms,omitempty"`
	// StormUpgradePauseMs are the pauses of live upgrades during an exec
	// storm of StormConcurrency slow-reading clients at a time, which ran
	// StormExecs execs, StormExecsFailed of them failing.
	StormUpgradePauseMs []float64 `json:"storm_upgrade_pause_ms,omitempty"`
	StormConcurrency    int       `json:"storm_concurrency,omitempty"`
	StormExecs          int       `json:"storm_execs,omitempty"`
	StormExecsFailed    int       `json:"storm_execs_failed,omitempty"`
	// StormGivenUp counts the tries of those upgrades given up and tried
	// again, by why (the shim's log).
	StormGivenUp map[string]int `json:"storm_tries_given_up,omitempty"`
}

// IdleSample is the memory of idle processes of one age: each runtime's
// shims (one idle container each) and instances of the floor programs.
type IdleSample struct {
	Age       string                     `json:"age"`
	Processes map[string][]procmem.Usage `json:"processes"`
}

// ScalePoint is the total memory of n idle containers' (or pods')
// runtime processes: shims, and pause processes or holders.
type ScalePoint struct {
	N         int           `json:"n"`
	Processes int           `json:"processes"`
	Total     procmem.Usage `json:"total"`
}

// Growth is one shim's idle memory before and after the work described.
type Growth struct {
	Work   string        `json:"work"`
	Before procmem.Usage `json:"before"`
	After  procmem.Usage `json:"after"`
}

// PodSamples are one runtime's pod figures.
type PodSamples struct {
	RunPodSandboxMs  []float64 `json:"run_pod_sandbox_ms"`
	FirstContainerMs []float64 `json:"pod_start_to_first_container_running_ms"`
	// Idle is the memory of each idle pod's runtime processes (its shim,
	// and its pause process or holder if it has one), summed per pod.
	Idle []PodMemory `json:"idle_pod_memory"`
	// Steady is the same pods' when they are SteadyAge old.
	Steady    []PodMemory `json:"steady_idle_pod_memory,omitempty"`
	SteadyAge string      `json:"steady_idle_age,omitempty"`
	// Scale is the total of all idle pods' runtime processes.
	Scale []ScalePoint `json:"pods_at_scale,omitempty"`
}

// PodMemory is one idle pod's runtime processes: its shim and the rest
// (pause process, holder; none for a pod held by its shim alone).
type PodMemory struct {
	Shim   procmem.Usage   `json:"shim"`
	Others []procmem.Usage `json:"others,omitempty"`
}

// Total is the pod's runtime processes together.
func (p PodMemory) Total() procmem.Usage { return p.Shim.Plus(procmem.Total(p.Others)) }

// at is the scale point for n, if sampled.
func at(points []ScalePoint, n int) (ScalePoint, bool) {
	i := slices.IndexFunc(points, func(p ScalePoint) bool { return p.N == n })
	if i < 0 {
		return ScalePoint{}, false
	}
	return points[i], true
}
