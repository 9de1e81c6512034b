package taskapi

import (
	"log/slog"

	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/kmsg"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim"
)

// The edge's tests serve requests that never reach a runtime (the core's
// own tests, in package shim, drive real containers through the edge).

// processSpecURL is the type URL containerd gives an OCI process spec (JSON).
const processSpecURL = "types.containerd.io/opencontainers/runtime-spec/1/Process"

// discard is a publisher that drops every event.
type discard struct{}

func (discard) Publish(string, proto.Message) {}

// testEnv is the shared part of a test shim that never runs a container:
// its reaper is never started.
func testEnv(ns string, log *slog.Logger) shim.Env {
	return shim.Env{Namespace: ns, Reaper: reaper.New(), Events: discard{}, Cgroups: cgroup.NewHost(), OOM: cgroup.NewOOMWatcher(log, kmsg.New()), Log: log}
}
