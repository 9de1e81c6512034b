// Package shim is tether's task core: the table of a shim's containers,
// containers with their processes, and the order in which exits and events
// leave. Each process's own state machine is package
// shim/internal/process, and the runtime calls of an init's and an exec's
// lifecycle are package shim/internal/lifecycle; no process leaves the
// core. Requests come from the task API's ttrpc edge (package taskapi) and
// flow one way: table -> container -> process -> lifecycle -> runtime;
// exits flow reaper -> container -> process -> event. Errors leave
// wrapped with containerd's errdefs kinds; the edge alone turns them into
// codes. It never holds a lock across a runtime call: State, Wait, Kill,
// Pids and Stats answer from what the shim knows while another request's
// runtime call runs.
package shim

import (
	"log/slog"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/internal/inflight"
	"github.com/tether-shim/tether/reaper"
)

// Publisher queues an event for containerd; it never blocks.
type Publisher interface {
	Publish(topic string, ev proto.Message)
}

// Env is what all containers of a shim share.
type Env struct {
	Namespace string // containerd namespace of the shim's containers
	Reaper    *reaper.Reaper
	Events    Publisher
	Cgroups   *cgroup.Host
	OOM       *cgroup.OOMWatcher
	Log       *slog.Logger

	// exits counts exits being handled, so that a handover to the next
	// process waits for them; set by NewTable.
	exits *inflight.Counter
	// carryStarts says a live upgrade may carry an exec's start in flight
	// over to the next process (Table.CarryStarts); set by NewTable.
	carryStarts *atomic.Bool
}
