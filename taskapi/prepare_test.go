package taskapi

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/shim"
)

// TestPrepareComesFirst: a new container's bundle is given to Prepare (a
// pod pointing the container at its namespaces) before the core creates
// it, only after the request's id and namespace are checked; its error
// refuses the container with that error's code, and the core never sees
// the request.
func TestPrepareComesFirst(t *testing.T) {
	var prepared []string
	refuse := fmt.Errorf("the pod has no pid namespace: %w", errdefs.ErrFailedPrecondition)
	containers := shim.NewTable(testEnv("test", slog.Default()))
	svc := New(Config{Containers: containers, Version: "test", Prepare: func(bundle string) error {
		prepared = append(prepared, bundle)
		return refuse
	}})
	ctx := context.Background()
	bundle := t.TempDir()
	_, err := svc.Create(ctx, &task.CreateTaskRequest{Id: "c1", Bundle: bundle})
	if status.Code(err) != codes.FailedPrecondition || len(prepared) != 1 || prepared[0] != bundle {
		t.Fatalf("create: %v, prepared %v", err, prepared)
	}
	if containers.Len() != 0 {
		t.Fatal("a refused container reached the core")
	}
	if _, err := svc.Create(ctx, &task.CreateTaskRequest{Id: "../c1", Bundle: bundle}); status.Code(err) != codes.InvalidArgument || len(prepared) != 1 {
		t.Fatalf("a bad id: %v, prepared %v", err, prepared)
	}
}
