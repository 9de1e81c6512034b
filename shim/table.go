package shim

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/internal/inflight"
	"github.com/tether-shim/tether/proto/task"
)

// Table is the shim's containers by id, from Create until Delete, and
// whether the shim is closing. It is the one place containers are added and
// removed: an id is reserved while its Create runs, so that a second Create
// of it is refused rather than run beside the first. Its lock is never held
// across a call into a container. A live upgrade writes down and takes back
// what it holds (handover.go, restore.go).
type Table struct {
	env *Env

	mu sync.Mutex
	// containers are the shim's containers by id, from Create until Delete.
	// A nil entry reserves an id while its Create runs. Guarded by mu.
	containers map[string]*Container
	// closing is set once the shim has begun to shut down: no container may
	// be created. Guarded by mu.
	closing bool
}

// NewTable returns the empty table of a shim whose containers share env.
func NewTable(env Env) *Table {
	env.exits = &inflight.Counter{}
	env.carryStarts = &atomic.Bool{}
	return &Table{env: &env, containers: make(map[string]*Container)}
}

// Create creates container r.Id and adds it. The id is reserved while the
// runtime creates the container; a failed create frees it again.
func (t *Table) Create(ctx context.Context, r *task.CreateTaskRequest) (*Container, error) {
	t.mu.Lock()
	if t.closing {
		t.mu.Unlock()
		return nil, fmt.Errorf("shim is shutting down: %w", errdefs.ErrFailedPrecondition)
	}
	if _, taken := t.containers[r.GetId()]; taken {
		t.mu.Unlock()
		return nil, fmt.Errorf("container %q: %w", r.GetId(), errdefs.ErrAlreadyExists)
	}
	t.containers[r.GetId()] = nil
	t.mu.Unlock()

	c, err := createContainer(ctx, r, t.env)
	t.mu.Lock()
	if err != nil {
		delete(t.containers, r.GetId())
	} else {
		t.containers[r.GetId()] = c
	}
	t.mu.Unlock()
	if err != nil {
		t.env.Log.Warn("create failed", "container", r.GetId(), "error", err)
		return nil, err
	}
	return c, nil
}

// Get returns container id; an id being created is not found yet.
func (t *Table) Get(id string) (*Container, error) {
	t.mu.Lock()
	c := t.containers[id]
	t.mu.Unlock()
	if c == nil {
		if err := ValidateID("container", id); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// Delete deletes container id (its init must be created or stopped) and
// removes it.
func (t *Table) Delete(ctx context.Context, id string) (ProcessState, error) {
	c, err := t.Get(id)
	if err != nil {
		return ProcessState{}, err
	}
	st, err := c.delete(ctx)
	if err != nil {
		return ProcessState{}, err
	}
	t.mu.Lock()
	delete(t.containers, c.ID)
	t.mu.Unlock()
	return st, nil
}

// Len counts the shim's containers, those being created among them.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.containers)
}

// CloseIfEmpty marks the shim as closing, so that no container is created
// any more, unless it still has containers; it reports whether it did.
func (t *Table) CloseIfEmpty() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.containers) > 0 {
		return false
	}
	t.closing = true
	return true
}

// IDs lists the shim's containers, those being created among them.
func (t *Table) IDs() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	ids := make([]string, 0, len(t.containers))
	for id := range t.containers {
		ids = append(ids, id)
	}
	return ids
}

// Closing reports whether containerd has asked the shim to shut down.
func (t *Table) Closing() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closing
}

// CheckNamespace refuses a request about another namespace (ns) than the
// shim's: a shim serves one namespace, whatever a group annotation says.
func (t *Table) CheckNamespace(ns string) error {
	if ns != t.env.Namespace {
		return fmt.Errorf("request for namespace %q reached the shim of namespace %q: %w", ns, t.env.Namespace, errdefs.ErrPermissionDenied)
	}
	return nil
}
