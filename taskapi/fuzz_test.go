package taskapi

import (
	"context"
	"log/slog"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/proto/types"
	"github.com/tether-shim/tether/shim"
)

// FuzzRequests decodes arbitrary bytes as task API requests and serves them
// on a shim without containers: no panic, only the expected error codes, and
// nothing created.
func FuzzRequests(f *testing.F) {
	seed := func(m proto.Message) []byte { b, _ := proto.Marshal(m); return b }
	f.Add(byte(0), seed(&task.CreateTaskRequest{Id: "a", Bundle: "/x", Stdout: "/y", Rootfs: []*types.Mount{{Type: "bind", Source: "/"}}}))
	f.Add(byte(1), seed(&task.ExecProcessRequest{Id: "a", ExecId: "b", Spec: &anypb.Any{TypeUrl: processSpecURL, Value: []byte(`{"args":["x"]}`)}}))
	f.Add(byte(2), seed(&task.KillRequest{Id: "a", Signal: 9, All: true}))
	f.Add(byte(3), seed(&task.DeleteRequest{Id: "a", ExecId: "b"}))
	f.Add(byte(4), seed(&task.UpdateTaskRequest{Id: "a"}))
	f.Add(byte(5), []byte{0xff, 0x01})
	containers := shim.NewTable(testEnv("fuzz", slog.New(slog.DiscardHandler)))
	svc := New(Config{Containers: containers, Shutdown: func() {}})
	ctx := context.Background()
	allowed := map[codes.Code]bool{codes.InvalidArgument: true, codes.NotFound: true, codes.FailedPrecondition: true, codes.Unimplemented: true}
	f.Fuzz(func(t *testing.T, method byte, data []byte) {
		var err error
		switch method % 10 {
		case 0:
			var r task.CreateTaskRequest
			if proto.Unmarshal(data, &r) != nil {
				return
			}
			r.Bundle = "/nonexistent/fuzz-bundle" // never a real container
			_, err = svc.Create(ctx, &r)
		case 1:
			var r task.ExecProcessRequest
			if proto.Unmarshal(data, &r) != nil {
				return
			}
			_, err = svc.Exec(ctx, &r)
		case 2:
			var r task.KillRequest
			if proto.Unmarshal(data, &r) != nil {
				return
			}
			_, err = svc.Kill(ctx, &r)
		case 3:
			var r task.DeleteRequest
			if proto.Unmarshal(data, &r) != nil {
				return
			}
			_, err = svc.Delete(ctx, &r)
		case 4:
			var r task.UpdateTaskRequest
			if proto.Unmarshal(data, &r) != nil {
				return
			}
			_, err = svc.Update(ctx, &r)
		case 5:
			var r task.StateRequest
			if proto.Unmarshal(data, &r) != nil {
				return
			}
			_, err = svc.State(ctx, &r)
		case 6:
			var r task.ResizePtyRequest
			if proto.Unmarshal(data, &r) != nil {
				return
			}
			_, err = svc.ResizePty(ctx, &r)
		case 7:
			var r task.CheckpointTaskRequest
			if proto.Unmarshal(data, &r) != nil {
				return
			}
			_, err = svc.Checkpoint(ctx, &r)
		case 8:
			var r task.StartRequest
			if proto.Unmarshal(data, &r) != nil {
				return
			}
			_, err = svc.Start(ctx, &r)
		case 9:
			var r task.CloseIORequest
			if proto.Unmarshal(data, &r) != nil {
				return
			}
			_, err = svc.CloseIO(ctx, &r)
		}
		if err == nil {
			t.Fatalf("method %d succeeded on a shim without containers", method%10)
		}
		if !allowed[status.Code(err)] {
			t.Fatalf("method %d: code %v: %v", method%10, status.Code(err), err)
		}
		if containers.Len() != 0 {
			t.Fatal("a container appeared")
		}
	})
}
