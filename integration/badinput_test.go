package integration

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/proto/runcopts"
	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/proto/types"
)

// TestHostileRequests sends malformed and hostile requests straight to a
// shim's socket. Each gets a clear error with the right code; the shim stays
// up and its container is untouched.
func TestHostileRequests(t *testing.T) {
	e := setup(t)
	ok := e.id("target")
	e.runDetached(ok, "sleep", "100000")
	done := ok + "-done"
	e.ctr("run", "-d", "--annotation", "io.containerd.tether.v2.group="+ok, "--runtime", harness.Runtime,
		harness.BusyboxImageName, done, "true")
	t.Cleanup(func() { e.remove(done) })
	e.waitFor("second container to stop", 20*time.Second, func() bool { return e.taskStatus(done) == "STOPPED" })
	// The stopped one shares the shim only if it joined the group; use the
	// running container's shim for everything and check that first.
	client, err := e.ctd.DialShim(ok)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	if _, err := client.State(ctx, &task.StateRequest{Id: done}); err != nil {
		t.Fatalf("the stopped container is not on the same shim: %v", err)
	}
	shimPid := shimsFor(ok)[0].pid

	dir := t.TempDir()
	bundle := func(name, config string) string {
		b := filepath.Join(dir, name)
		os.MkdirAll(b, 0o755)
		if config != "" {
			os.WriteFile(filepath.Join(b, "config.json"), []byte(config), 0o644)
		}
		return b
	}
	goodSpec, _ := os.ReadFile(filepath.Join(e.bundle(ok), "config.json"))
	var specMap map[string]any
	json.Unmarshal(goodSpec, &specMap)
	specMap["process"].(map[string]any)["terminal"] = true
	terminalSpec, _ := json.Marshal(specMap)
	regular := filepath.Join(dir, "regular-file")
	os.WriteFile(regular, nil, 0o644)
	unknownOpts, _ := anypb.New(&task.StateRequest{})
	missingRuntime, _ := anypb.New(&runcopts.Options{BinaryName: "/nonexistent/runc"})
	procSpec := func(v string) *anypb.Any {
		return &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: []byte(v)}
	}
	if _, err := client.Exec(ctx, &task.ExecProcessRequest{Id: ok, ExecId: "pending", Spec: procSpec(`{"args":["true"],"cwd":"/"}`)}); err != nil {
		t.Fatal(err)
	}

	create := func(r *task.CreateTaskRequest) func() error {
		return func() error { _, err := client.Create(ctx, r); return err }
	}
	cases := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"create: empty id", create(&task.CreateTaskRequest{Bundle: bundle("b1", string(goodSpec))}), codes.InvalidArgument},
		{"create: over-long id", create(&task.CreateTaskRequest{Id: strings.Repeat("x", 300), Bundle: bundle("b2", string(goodSpec))}), codes.InvalidArgument},
		{"create: id with slash", create(&task.CreateTaskRequest{Id: "a/b", Bundle: bundle("b3", string(goodSpec))}), codes.InvalidArgument},
		{"create: id ..", create(&task.CreateTaskRequest{Id: "..", Bundle: bundle("b4", string(goodSpec))}), codes.InvalidArgument},
		{"create: id ../../etc", create(&task.CreateTaskRequest{Id: "../../etc", Bundle: bundle("b5", string(goodSpec))}), codes.InvalidArgument},
		{"create: id with NUL", create(&task.CreateTaskRequest{Id: "a\x00b", Bundle: bundle("b6", string(goodSpec))}), codes.InvalidArgument},
		{"create: bundle that does not exist", create(&task.CreateTaskRequest{Id: "nob", Bundle: "/nonexistent/bundle"}), codes.InvalidArgument},
		{"create: relative bundle", create(&task.CreateTaskRequest{Id: "relb", Bundle: "relative/bundle"}), codes.InvalidArgument},
		{"create: bundle without config.json", create(&task.CreateTaskRequest{Id: "nocfg", Bundle: bundle("b7", "")}), codes.InvalidArgument},
		{"create: config.json not JSON", create(&task.CreateTaskRequest{Id: "notjson", Bundle: bundle("b8", "{{{")}), codes.InvalidArgument},
		{"create: config.json without process", create(&task.CreateTaskRequest{Id: "noproc", Bundle: bundle("b9", `{"ociVersion":"1.0.2"}`)}), codes.InvalidArgument},
		{"create: terminal mismatch", create(&task.CreateTaskRequest{Id: "tty", Bundle: bundle("b10", string(terminalSpec))}), codes.InvalidArgument},
		{"create: unknown options type", create(&task.CreateTaskRequest{Id: "opts", Bundle: bundle("b11", string(goodSpec)), Options: unknownOpts}), codes.InvalidArgument},
		{"create: garbage options", create(&task.CreateTaskRequest{Id: "opts2", Bundle: bundle("b12", string(goodSpec)),
			Options: &anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: []byte{0xff, 0xff, 0xff}}}), codes.InvalidArgument},
		{"create: missing runtime binary", create(&task.CreateTaskRequest{Id: "nort", Bundle: bundle("b13", string(goodSpec)), Options: missingRuntime}), codes.FailedPrecondition},
		{"create: duplicate id", create(&task.CreateTaskRequest{Id: ok, Bundle: bundle("b14", string(goodSpec))}), codes.AlreadyExists},
		{"create: stdout fifo missing", create(&task.CreateTaskRequest{Id: "nofifo", Bundle: bundle("b15", string(goodSpec)), Stdout: "/nonexistent/fifo"}), codes.InvalidArgument},
		{"create: stdout is a regular file", create(&task.CreateTaskRequest{Id: "regout", Bundle: bundle("b16", string(goodSpec)), Stdout: regular}), codes.InvalidArgument},
		{"create: rootfs mount without type", create(&task.CreateTaskRequest{Id: "badmnt", Bundle: bundle("b17", string(goodSpec)),
			Rootfs: []*types.Mount{{Source: "/"}}}), codes.InvalidArgument},
		{"start: unknown container", func() error { _, err := client.Start(ctx, &task.StartRequest{Id: "nope"}); return err }, codes.NotFound},
		{"start: running init", func() error { _, err := client.Start(ctx, &task.StartRequest{Id: ok}); return err }, codes.FailedPrecondition},
		{"start: unknown exec", func() error { _, err := client.Start(ctx, &task.StartRequest{Id: ok, ExecId: "nope"}); return err }, codes.NotFound},
		{"exec: bad exec id", func() error {
			_, err := client.Exec(ctx, &task.ExecProcessRequest{Id: ok, ExecId: "../x", Spec: procSpec(`{"args":["true"]}`)})
			return err
		}, codes.InvalidArgument},
		{"exec: duplicate exec id", func() error {
			_, err := client.Exec(ctx, &task.ExecProcessRequest{Id: ok, ExecId: "pending", Spec: procSpec(`{"args":["true"]}`)})
			return err
		}, codes.AlreadyExists},
		{"exec: no spec", func() error {
			_, err := client.Exec(ctx, &task.ExecProcessRequest{Id: ok, ExecId: "nospec"})
			return err
		}, codes.InvalidArgument},
		{"exec: spec of another type", func() error {
			_, err := client.Exec(ctx, &task.ExecProcessRequest{Id: ok, ExecId: "wrongtype", Spec: &anypb.Any{TypeUrl: "example.Other", Value: []byte("{}")}})
			return err
		}, codes.InvalidArgument},
		{"exec: spec not JSON", func() error {
			_, err := client.Exec(ctx, &task.ExecProcessRequest{Id: ok, ExecId: "badjson", Spec: procSpec("{")})
			return err
		}, codes.InvalidArgument},
		{"exec: spec without args", func() error {
			_, err := client.Exec(ctx, &task.ExecProcessRequest{Id: ok, ExecId: "noargs", Spec: procSpec(`{"cwd":"/"}`)})
			return err
		}, codes.InvalidArgument},
		{"exec: into a stopped container", func() error {
			_, err := client.Exec(ctx, &task.ExecProcessRequest{Id: done, ExecId: "late", Spec: procSpec(`{"args":["true"]}`)})
			return err
		}, codes.FailedPrecondition},
		{"kill: unknown container", func() error { _, err := client.Kill(ctx, &task.KillRequest{Id: "nope", Signal: 9}); return err }, codes.NotFound},
		{"kill: signal 0", func() error { _, err := client.Kill(ctx, &task.KillRequest{Id: ok, Signal: 0}); return err }, codes.InvalidArgument},
		{"kill: signal 2^32-1 (-1)", func() error { _, err := client.Kill(ctx, &task.KillRequest{Id: ok, Signal: 0xffffffff}); return err }, codes.InvalidArgument},
		{"kill: signal 65", func() error { _, err := client.Kill(ctx, &task.KillRequest{Id: ok, Signal: 65}); return err }, codes.InvalidArgument},
		{"kill: stopped init", func() error { _, err := client.Kill(ctx, &task.KillRequest{Id: done, Signal: 9}); return err }, codes.NotFound},
		{"kill: unknown exec", func() error {
			_, err := client.Kill(ctx, &task.KillRequest{Id: ok, ExecId: "nope", Signal: 9})
			return err
		}, codes.NotFound},
		{"kill: exec never started", func() error {
			_, err := client.Kill(ctx, &task.KillRequest{Id: ok, ExecId: "pending", Signal: 9})
			return err
		}, codes.FailedPrecondition},
		{"delete: unknown container", func() error { _, err := client.Delete(ctx, &task.DeleteRequest{Id: "nope"}); return err }, codes.NotFound},
		{"delete: running init", func() error { _, err := client.Delete(ctx, &task.DeleteRequest{Id: ok}); return err }, codes.FailedPrecondition},
		{"delete: unknown exec", func() error { _, err := client.Delete(ctx, &task.DeleteRequest{Id: ok, ExecId: "nope"}); return err }, codes.NotFound},
		{"wait: unknown container", func() error { _, err := client.Wait(ctx, &task.WaitRequest{Id: "nope"}); return err }, codes.NotFound},
		{"wait: unknown exec", func() error { _, err := client.Wait(ctx, &task.WaitRequest{Id: ok, ExecId: "nope"}); return err }, codes.NotFound},
		{"state: bad id", func() error { _, err := client.State(ctx, &task.StateRequest{Id: "a b"}); return err }, codes.InvalidArgument},
		{"resize: unknown exec", func() error {
			_, err := client.ResizePty(ctx, &task.ResizePtyRequest{Id: ok, ExecId: "nope", Width: 80, Height: 24})
			return err
		}, codes.NotFound},
		{"close-io: unknown exec", func() error {
			_, err := client.CloseIO(ctx, &task.CloseIORequest{Id: ok, ExecId: "nope", Stdin: true})
			return err
		}, codes.NotFound},
		{"pause: stopped container", func() error { _, err := client.Pause(ctx, &task.PauseRequest{Id: done}); return err }, codes.FailedPrecondition},
		{"resume: running container", func() error { _, err := client.Resume(ctx, &task.ResumeRequest{Id: ok}); return err }, codes.FailedPrecondition},
		{"update: resources of another type", func() error {
			_, err := client.Update(ctx, &task.UpdateTaskRequest{Id: ok, Resources: procSpec("{}")})
			return err
		}, codes.InvalidArgument},
		{"checkpoint: options of another type", func() error {
			_, err := client.Checkpoint(ctx, &task.CheckpointTaskRequest{Id: ok, Path: dir, Options: unknownOpts})
			return err
		}, codes.InvalidArgument},
		{"stats: unknown container", func() error { _, err := client.Stats(ctx, &task.StatsRequest{Id: "nope"}); return err }, codes.NotFound},
		{"pids: unknown container", func() error { _, err := client.Pids(ctx, &task.PidsRequest{Id: "nope"}); return err }, codes.NotFound},
	}
	for _, c := range cases {
		err := c.call()
		if got := status.Code(err); got != c.want {
			t.Errorf("%s: %v (code %v), want %v", c.name, err, got, c.want)
		} else if st, _ := status.FromError(err); st.Message() == "" {
			t.Errorf("%s: error without a message", c.name)
		}
	}
	t.Logf("%d hostile requests answered", len(cases))

	// Below the task API: frames ttrpc itself must refuse.
	raw := rawDial(t, e, ok)
	defer raw.Close()
	raw.check(t, "oversized frame", raw.frame(1, 1, make([]byte, 5<<20)), codes.ResourceExhausted)
	raw.check(t, "garbage request", raw.frame(3, 1, []byte{0xff, 0xff, 0xff, 0x01}), codes.Unknown, codes.InvalidArgument, codes.Internal)
	raw.check(t, "unknown service", raw.request(5, "example.Nope", "Call", nil), codes.Unimplemented)
	raw.check(t, "unknown method", raw.request(7, "containerd.task.v2.Task", "Nope", nil), codes.Unimplemented)
	raw.check(t, "garbage payload", raw.request(9, "containerd.task.v2.Task", "State", []byte{0xff, 0xff}), codes.Unknown, codes.InvalidArgument, codes.Internal)

	if syscall.Kill(shimPid, 0) != nil {
		t.Fatal("the shim died")
	}
	if st := e.taskStatus(ok); st != "RUNNING" {
		t.Fatalf("target container %q after the hostile requests", st)
	}
	if res := e.ctr("task", "exec", "--exec-id", "after", ok, "echo", "fine"); res.Stdout != "fine\n" {
		t.Fatalf("exec after the hostile requests: %q", res.Stdout)
	}
}

// rawConn speaks ttrpc's framing directly, to send what no client would.
type rawConn struct {
	net.Conn
}

func rawDial(t *testing.T, e *env, id string) *rawConn {
	t.Helper()
	address, err := e.ctd.ShimAddress(id)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("unix", strings.TrimPrefix(address, "unix://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return &rawConn{c}
}

// frame writes one ttrpc frame: length, stream id, type, flags, payload.
func (c *rawConn) frame(stream uint32, typ byte, payload []byte) uint32 {
	var h [10]byte
	binary.BigEndian.PutUint32(h[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(h[4:8], stream)
	h[8] = typ
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	c.Write(h[:])
	c.Write(payload)
	return stream
}

func (c *rawConn) request(stream uint32, service, method string, payload []byte) uint32 {
	data, _ := proto.Marshal(&ttrpc.Request{Service: service, Method: method, Payload: payload})
	return c.frame(stream, 1, data)
}

// check reads the response to stream and compares its status code.
func (c *rawConn) check(t *testing.T, name string, stream uint32, want ...codes.Code) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [10]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		t.Errorf("%s: no response: %v", name, err)
		return
	}
	body := make([]byte, binary.BigEndian.Uint32(h[0:4]))
	if _, err := io.ReadFull(c, body); err != nil {
		t.Errorf("%s: short response: %v", name, err)
		return
	}
	if got := binary.BigEndian.Uint32(h[4:8]); got != stream {
		t.Errorf("%s: response on stream %d, want %d", name, got, stream)
	}
	var resp ttrpc.Response
	if err := proto.Unmarshal(body, &resp); err != nil {
		t.Errorf("%s: undecodable response: %v", name, err)
		return
	}
	got := codes.Code(resp.GetStatus().GetCode())
	for _, w := range want {
		if got == w {
			return
		}
	}
	t.Errorf("%s: code %v (%s), want one of %v", name, got, resp.GetStatus().GetMessage(), want)
}
