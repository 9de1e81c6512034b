package stdio

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/console"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/fdpass"
	"github.com/tether-shim/tether/internal/pipetest"
)

// ptmxFds counts this process's descriptors on a terminal master, as
// containerd's CRI test counts the shim's (lsof -p PID | grep ptmx).
func ptmxFds(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.HasSuffix(target, "ptmx") {
			n++
		}
	}
	return n
}

// sendMaster does what the runtime does with a terminal's master: sends it
// through the console socket at path.
func sendMaster(t *testing.T, path string, master console.Console) {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, _, err := conn.(*net.UnixConn).WriteMsgUnix([]byte("/dev/ptmx"), unix.UnixRights(int(master.Fd())), nil); err != nil {
		t.Fatal(err)
	}
}

// TestTerminalHoldsOneMaster: while a terminal process runs, its IO holds
// one descriptor of the terminal's master, whether it pumps output only or
// stdin too, and none once the process's IO is closed: containerd's runc
// shim holds exactly that, and containerd's CRI test
// TestContainerTTYLeakAfterExit counts the shim's /dev/ptmx descriptors.
// tether held a duplicate per pump as well (3 with stdin).
func TestTerminalHoldsOneMaster(t *testing.T) {
	for _, withStdin := range []bool{false, true} {
		name := map[bool]string{false: "ttyOnly", true: "interactive"}[withStdin]
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			paths := Paths{Stdout: filepath.Join(dir, "out"), Terminal: true}
			if withStdin {
				paths.Stdin = filepath.Join(dir, "in")
			}
			for _, p := range []string{paths.Stdin, paths.Stdout} {
				if p != "" {
					if err := unix.Mkfifo(p, 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			client, err := os.OpenFile(paths.Stdout, os.O_RDONLY|unix.O_NONBLOCK, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			before := ptmxFds(t)
			pio, err := Open(paths, Config{})
			if err != nil {
				t.Fatal(err)
			}
			defer pio.Close()
			master, slavePath, err := console.NewPty()
			if err != nil {
				t.Fatal(err)
			}
			slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer slave.Close()
			sendMaster(t, pio.ConsoleSocket().Path(), master)
			master.Close() // the runtime's copy
			if err := pio.Started(); err != nil {
				t.Fatal(err)
			}
			if n := ptmxFds(t) - before; n != 1 {
				t.Errorf("a running terminal process's IO holds %d descriptors of its master, want 1", n)
			}
			if err := pio.Resize(100, 40); err != nil {
				t.Fatal(err)
			}
			if ws, err := unix.IoctlGetWinsize(int(slave.Fd()), unix.TIOCGWINSZ); err != nil || ws.Col != 100 || ws.Row != 40 {
				t.Fatalf("terminal size after Resize(100, 40): %+v, %v", ws, err)
			}
			if _, err := slave.Write([]byte("the end")); err != nil {
				t.Fatal(err)
			}
			slave.Close() // the process exits
			pio.Exited()
			pio.Close()
			if n := ptmxFds(t) - before; n != 0 {
				t.Errorf("the closed IO of a terminal process holds %d descriptors of its master, want none", n)
			}
			unix.SetNonblock(int(client.Fd()), false)
			if got := pipetest.ReadAll(t, client, "the client's fifo"); string(got) != "the end" {
				t.Errorf("the client read %q", got)
			}
		})
	}
}

// TestTerminalMovesToTheNextProcess: a terminal's IO written down names its
// master once (state version 5) and the IO taken back holds one descriptor
// of it; a state that named a duplicate for each pump (before version 5) is
// taken back the same way. Output and input go on through the master.
func TestTerminalMovesToTheNextProcess(t *testing.T) {
	for _, format := range []string{"v5", "v4"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			paths := Paths{Stdin: filepath.Join(dir, "in"), Stdout: filepath.Join(dir, "out"), Terminal: true}
			for _, p := range []string{paths.Stdin, paths.Stdout} {
				if err := unix.Mkfifo(p, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			clientIn, err := os.OpenFile(paths.Stdin, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer clientIn.Close()
			client, err := os.OpenFile(paths.Stdout, os.O_RDONLY|unix.O_NONBLOCK, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			before := ptmxFds(t)
			pio, err := Open(paths, Config{})
			if err != nil {
				t.Fatal(err)
			}
			master, slavePath, err := console.NewPty()
			if err != nil {
				t.Fatal(err)
			}
			slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer slave.Close()
			if c, err := console.ConsoleFromFile(slave); err != nil || c.SetRaw() != nil {
				t.Fatal("raw terminal:", err) // no echo: the client reads only what the process writes
			}
			sendMaster(t, pio.ConsoleSocket().Path(), master)
			master.Close()
			if err := pio.Started(); err != nil {
				t.Fatal(err)
			}
			st, err := pio.Handover()
			if err != nil {
				t.Fatal(err)
			}
			if st.Console < 0 || len(st.Outputs) != 1 || st.Input == nil || st.Outputs[0].Src != st.Console || st.Input.Dst != st.Console {
				t.Fatalf("the master is not named once: %+v", st)
			}
			if n := ptmxFds(t) - before; n != 2 { // the IO's and the one handed over
				t.Fatalf("%d descriptors of the master after the handover, want 2", n)
			}
			if format == "v4" { // a duplicate per pump, as before version 5
				for _, fd := range []*int{&st.Outputs[0].Src, &st.Input.Dst} {
					if *fd, err = fdpass.Dup(st.Console); err != nil {
						t.Fatal(err)
					}
				}
			}
			adopt := func(int) (<-chan runc.Exit, error) { return nil, nil }
			next, err := Restore(paths, st, adopt)
			if err != nil {
				t.Fatal(err)
			}
			// The take-back is complete: the received descriptors go.
			fdpass.Close(st.Fds()...)
			if n := ptmxFds(t) - before; n != 2 { // the IO handed over and the one taken back
				t.Errorf("%d descriptors of the master after the take-back, want 2", n)
			}
			if err := next.Resume(); err != nil {
				t.Fatal(err)
			}
			if err := next.Resize(90, 30); err != nil {
				t.Fatal(err)
			}
			if _, err := clientIn.Write([]byte("in\n")); err != nil {
				t.Fatal(err)
			}
			line := make([]byte, 3)
			if _, err := io.ReadFull(slave, line); err != nil || string(line) != "in\n" {
				t.Fatalf("the process read %q, %v", line, err)
			}
			if _, err := slave.Write([]byte("out")); err != nil {
				t.Fatal(err)
			}
			unix.SetNonblock(int(client.Fd()), false)
			if got := pipetest.ReadAll(t, io.LimitReader(client, 3), "the client's fifo"); string(got) != "out" {
				t.Errorf("the client read %q", got)
			}
			slave.Close()
			next.Exited()
			next.Close()
			pio.Close() // the IO handed over goes too (in the shim, with its process)
			if n := ptmxFds(t) - before; n != 0 {
				t.Errorf("%d descriptors of the master once both IOs are closed, want none", n)
			}
		})
	}
}
