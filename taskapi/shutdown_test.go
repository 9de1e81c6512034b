package taskapi

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"

	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/shim"
)

// TestShutdownWhileKeptLeavesTheShimOpen: containerd 2.x asks for a
// Shutdown after each container of a pod it deletes; while the pod sandbox
// keeps the shim, the shim stays and still takes new containers; once
// nothing keeps it, the next Shutdown ends it.
func TestShutdownWhileKeptLeavesTheShimOpen(t *testing.T) {
	var kept atomic.Bool
	kept.Store(true)
	var shutdowns atomic.Int32
	containers := shim.NewTable(testEnv("test", slog.Default()))
	svc := New(Config{
		Containers: containers,
		Version:    "test",
		Shutdown:   func() { shutdowns.Add(1) },
		Keep:       kept.Load,
	})
	ctx := context.Background()
	for range 3 {
		if _, err := svc.Shutdown(ctx, &task.ShutdownRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	closing := containers.Closing()
	if shutdowns.Load() != 0 || closing {
		t.Fatalf("kept shim: %d shutdowns, closing %v; want none", shutdowns.Load(), closing)
	}
	kept.Store(false)
	if _, err := svc.Shutdown(ctx, &task.ShutdownRequest{}); err != nil {
		t.Fatal(err)
	}
	if shutdowns.Load() != 1 {
		t.Fatalf("%d shutdowns once nothing keeps the shim, want 1", shutdowns.Load())
	}
	if _, err := svc.Create(ctx, &task.CreateTaskRequest{Id: "late", Bundle: t.TempDir()}); err == nil {
		t.Fatal("a shim shutting down took a new container")
	}
}
