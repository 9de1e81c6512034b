package shim_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/fifo"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/proto/task"
)

func (f *fixture) stdinWriter(name string) (string, io.WriteCloser) {
	path := filepath.Join(f.dir, name)
	w, err := fifo.OpenFifo(f.ctx, path, unix.O_WRONLY|unix.O_CREAT|unix.O_NONBLOCK, 0o600)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { w.Close() })
	return path, w
}

// TestDeleteExecWithStuckStdinDoesNotHang: the exec leaves a child that
// holds its stdin and never reads, and the client has written more than the
// pipe takes: Delete must still return (found by review: it hung).
func TestDeleteExecWithStuckStdinDoesNotHang(t *testing.T) {
	f := newFixture(t)
	f.create("stuck", true, "sleep", "100")
	f.start("stuck", "")
	defer f.teardown("stuck")
	in, w := f.stdinWriter("stuck-in")
	spec, _ := json.Marshal(map[string]any{"args": []string{"sh", "-c", "exec 3<&0; sleep 30 <&3 & exit 0"}, "cwd": "/"})
	if _, err := f.svc.Exec(f.ctx, &task.ExecProcessRequest{Id: "stuck", ExecId: "e", Stdin: in, Spec: &anypb.Any{TypeUrl: processSpecURL, Value: spec}}); err != nil {
		t.Fatal(err)
	}
	f.start("stuck", "e")
	// The client writes 16 KiB at a time; once the fifo and the stdin pipe
	// behind it (64 KiB each) are full, the copy between them is stuck.
	written := make(chan int, 64)
	go func() {
		for n := 0; n < 1<<20; n += 16 << 10 {
			if _, err := w.Write(make([]byte, 16<<10)); err != nil {
				return
			}
			written <- n + 16<<10
		}
	}()
	for n := 0; n < 128<<10; n = <-written {
	}
	if code := f.wait("stuck", "e"); code != 0 {
		t.Fatalf("exit %d", code)
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.svc.Delete(f.ctx, &task.DeleteRequest{Id: "stuck", ExecId: "e"})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Delete of the exec hung behind its stdin copy")
	}
}

// TestCloseIOBeforeExecStart: a CloseIO that comes before the exec starts
// still gives the exec EOF once the client is gone.
func TestCloseIOBeforeExecStart(t *testing.T) {
	f := newFixture(t)
	f.create("cio", true, "sleep", "100")
	f.start("cio", "")
	defer f.teardown("cio")
	in, w := f.stdinWriter("cio-in")
	spec, _ := json.Marshal(map[string]any{"args": []string{"cat"}, "cwd": "/"})
	if _, err := f.svc.Exec(f.ctx, &task.ExecProcessRequest{Id: "cio", ExecId: "cat", Stdin: in, Spec: &anypb.Any{TypeUrl: processSpecURL, Value: spec}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.CloseIO(f.ctx, &task.CloseIORequest{Id: "cio", ExecId: "cat", Stdin: true}); err != nil {
		t.Fatal(err)
	}
	f.start("cio", "cat")
	w.Close()
	if code := f.wait("cio", "cat"); code != 0 {
		t.Fatalf("cat exit %d", code)
	}
}

// TestStdinReachesAProcessThatReadsLate: the client writes all its stdin,
// closes it and says so (CloseIO, as ctr, nerdctl and the CRI's stdin_once
// do) before the process reads anything (nerdctl run -i with
// `sleep 1; md5sum`). The process must get every byte, then EOF: with a
// full stdin pipe it hung for good (6 of 6 tries under nerdctl).
func TestStdinReachesAProcessThatReadsLate(t *testing.T) {
	f := newFixture(t)
	f.create("late", true, "sleep", "100")
	f.start("late", "")
	defer f.teardown("late")
	for i, size := range []int{64 << 10, 100 << 10, 128 << 10, 1} {
		execID := fmt.Sprintf("reader%d", i)
		in, w := f.stdinWriter(execID + "-in")
		out := f.output(execID + "-out")
		release := filepath.Join(f.dir, execID+"-go")
		// The process reads only once the test says so: after the client
		// is done.
		script := fmt.Sprintf("until [ -e %s ]; do usleep 1000; done; wc -c", release)
		spec, _ := json.Marshal(map[string]any{"args": []string{"sh", "-c", script}, "cwd": "/"})
		if _, err := f.svc.Exec(f.ctx, &task.ExecProcessRequest{Id: "late", ExecId: execID, Stdin: in, Stdout: out.path,
			Spec: &anypb.Any{TypeUrl: processSpecURL, Value: spec}}); err != nil {
			t.Fatal(err)
		}
		f.start("late", execID)
		if _, err := w.Write(bytes.Repeat([]byte{'x'}, size)); err != nil {
			t.Fatal(err)
		}
		w.Close()
		if _, err := f.svc.CloseIO(f.ctx, &task.CloseIORequest{Id: "late", ExecId: execID, Stdin: true}); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(release, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(out.text(t)); got != strconv.Itoa(size) {
			t.Fatalf("%d bytes of stdin: the process counted %q", size, got)
		}
		if code := f.wait("late", execID); code != 0 {
			t.Fatalf("exit %d", code)
		}
		if _, err := f.svc.Delete(f.ctx, &task.DeleteRequest{Id: "late", ExecId: execID}); err != nil {
			t.Fatal(err)
		}
	}
}
