package harness

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/ttrpc"

	sandboxapi "github.com/tether-shim/tether/proto/sandbox"
	"github.com/tether-shim/tether/proto/task"
)

// Bundle is the bundle directory containerd made for container id.
func (c *Containerd) Bundle(id string) string {
	return filepath.Join(c.Dir, "state", "io.containerd.runtime.v2.task", c.Namespace, id)
}

// ShimAddress is the address tether's start wrote into the bundle of id.
func (c *Containerd) ShimAddress(id string) (string, error) {
	data, err := os.ReadFile(filepath.Join(c.Bundle(id), "address"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(data)), nil
}

// ShimClient is a ttrpc task client straight on the shim of container id,
// for what ctr cannot express.
type ShimClient struct {
	task.TaskService
	client *ttrpc.Client
}

// Sandbox is the sandbox API of the same shim.
func (s *ShimClient) Sandbox() sandboxapi.SandboxService {
	return sandboxapi.NewSandboxClient(s.client)
}

// DialShim connects to the shim serving container id.
func (c *Containerd) DialShim(id string) (*ShimClient, error) {
	address, err := c.ShimAddress(id)
	if err != nil {
		return nil, err
	}
	return DialShimAddress(address)
}

// DialShimAddress connects to a shim socket ("unix://path" or a path).
func DialShimAddress(address string) (*ShimClient, error) {
	conn, err := net.DialTimeout("unix", strings.TrimPrefix(address, "unix://"), 5*time.Second)
	if err != nil {
		return nil, err
	}
	client := ttrpc.NewClient(conn)
	return &ShimClient{TaskService: task.NewTaskClient(client), client: client}, nil
}

func (s *ShimClient) Close() error { return s.client.Close() }

// Events collects containerd's events as `ctr events` prints them.
type Events struct {
	mu     sync.Mutex
	lines  []string
	cancel context.CancelFunc
	done   chan struct{}
}

// SubscribeEvents starts `ctr events`; Close stops it.
func (c *Containerd) SubscribeEvents() (*Events, error) {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := c.CtrCommand(ctx, "events")
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	e := &Events{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			e.mu.Lock()
			e.lines = append(e.lines, sc.Text())
			e.mu.Unlock()
		}
		cmd.Wait()
	}()
	if err := c.syncEvents(ctx, e); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// syncEvents returns once ctr, which subscribes asynchronously, is
// subscribed: it labels the namespace until the update comes through.
func (c *Containerd) syncEvents(ctx context.Context, e *Events) error {
	c.Ctr(ctx, nil, "namespaces", "create", c.Namespace) // fails if it exists: fine
	for i := 0; i < 30; i++ {
		mark := fmt.Sprintf("tether.events-subscribed=%d-%d", os.Getpid(), i)
		if _, err := c.Ctr(ctx, nil, "namespaces", "label", c.Namespace, mark); err != nil {
			return fmt.Errorf("mark the event stream: %w", err)
		}
		value := strings.SplitN(mark, "=", 2)[1]
		if e.waitForLine(time.Second, "tether.events-subscribed", value) {
			return nil
		}
	}
	return fmt.Errorf("ctr events never showed the namespace's updates")
}

// waitForLine says whether a line mentioning every one of subs came within timeout.
func (e *Events) waitForLine(timeout time.Duration, subs ...string) bool {
	deadline := time.Now().Add(timeout)
	for {
		if len(e.Matching(subs...)) > 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, not waiting in its place
	}
}

// Matching returns the topics (in order) of events whose line contains every one of subs.
func (e *Events) Matching(subs ...string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var topics []string
next:
	for _, l := range e.lines {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		// date time zone-offset zone namespace topic event
		if f := strings.Fields(l); len(f) >= 6 {
			topics = append(topics, f[5])
		}
	}
	return topics
}

// WaitFor waits until an event with topic mentions every one of subs
// (timeout stretched by Patience).
func (e *Events) WaitFor(topic string, timeout time.Duration, subs ...string) error {
	timeout = Patience(timeout)
	deadline := time.Now().Add(timeout)
	for {
		for _, t := range e.Matching(subs...) {
			if t == topic {
				return nil
			}
		}
		if time.Now().After(deadline) {
			e.mu.Lock()
			defer e.mu.Unlock()
			return fmt.Errorf("no %s event for %v within %v; events:\n%s", topic, subs, timeout, strings.Join(e.lines, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *Events) Close() {
	e.cancel()
	<-e.done
}
