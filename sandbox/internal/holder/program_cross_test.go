package holder

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// crossProgram is the holder program's code as a shim built for goarch
// holds it: read from the symbol table of this package's test binary
// built for that architecture.
func crossProgram(t *testing.T, goarch string) []byte {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "holder-"+goarch+".test")
	build := exec.Command("go", "test", "-c", "-o", bin, ".")
	build.Env = append(os.Environ(), "GOARCH="+goarch, "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build for %s: %v\n%s", goarch, err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	text := f.Section(".text")
	for _, s := range syms {
		if !strings.HasSuffix(s.Name, "/sandbox/internal/holder.program.abi0") { // an assembly function
			continue
		}
		data, err := text.Data()
		if err != nil {
			t.Fatal(err)
		}
		off := s.Value - text.Addr
		if s.Size == 0 || s.Size > maxProgram || off+s.Size > uint64(len(data)) {
			t.Fatalf("program: %d bytes at %#x", s.Size, s.Value)
		}
		return data[off : off+s.Size]
	}
	t.Fatalf("no holder program in the %s build", goarch)
	return nil
}

// TestArm64Program: the arm64 holder program, in the ELF image a shim
// built for arm64 executes, run under qemu-user from an amd64 machine
// (Debian's qemu-user-static: make deps): it sets itself up as the amd64
// one does (ignored signals, an empty root, its name, no capabilities),
// reports ready, holds on until its lifeline closes and exits 0; a step
// that fails (no CAP_SYS_CHROOT for its root) is reported with its errno.
func TestArm64Program(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("checks arm64's program from an amd64 machine")
	}
	if os.Geteuid() != 0 {
		t.Skip("the holder takes a root of its own: root only")
	}
	qemu, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		t.Fatalf("qemu-aarch64-static (Debian's qemu-user-static, make deps): %v", err)
	}
	// Open to everyone: one holder runs as nobody.
	dir, err := os.MkdirTemp("", "tether-arm64-holder-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(dir, "holder")
	if err := os.WriteFile(prog, image(crossProgram(t, "arm64"), 183), 0o755); err != nil {
		t.Fatal(err)
	}
	r := startReaper(t)
	// start returns the holder's pid (read before its waiter releases the
	// process), its root, its status to come, its lifeline and its report.
	start := func(cred *syscall.Credential) (int, string, chan int, *os.File, error) {
		root, err := os.MkdirTemp(dir, "root-")
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(root, 0o755)
		lifeR, lifeW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer lifeR.Close()
		readyR, readyW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer readyR.Close()
		cmd := exec.Command(qemu, prog, "-id", "pod1")
		cmd.Dir = root
		cmd.ExtraFiles = []*os.File{lifeR, readyW}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		ec, err := r.Start(cmd)
		readyW.Close()
		if err != nil {
			t.Fatal(err)
		}
		pid := cmd.Process.Pid
		status := make(chan int, 1)
		go func() {
			s, _ := r.Wait(cmd, ec)
			status <- s
		}()
		return pid, root, status, lifeW, awaitReady(readyR)
	}
	awaitStatus := func(status chan int) int {
		select {
		case s := <-status:
			return s
		case <-time.After(60 * time.Second):
			t.Fatal("the arm64 holder did not exit")
			return -1
		}
	}

	pid, root, status, lifeline, err := start(nil)
	if err != nil {
		lifeline.Close()
		t.Fatalf("arm64 holder: %v", err)
	}
	st := procStatus(pid)
	for _, key := range []string{"CapPrm", "CapEff"} {
		if st[key] != "0000000000000000" {
			t.Errorf("%s %s", key, st[key])
		}
	}
	if st["NoNewPrivs"] != "1" {
		t.Errorf("NoNewPrivs %q", st["NoNewPrivs"])
	}
	for _, sig := range []syscall.Signal{syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT} {
		if !sigmask(st["SigIgn"], sig) {
			t.Errorf("%v not ignored: %s", sig, st["SigIgn"])
		}
	}
	if got := strings.TrimSpace(procFile(pid, "comm")); got != Name {
		t.Errorf("comm %q", got)
	}
	if got, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "root")); got != root {
		t.Errorf("root %q, want %s", got, root)
	}
	select {
	case s := <-status:
		t.Fatalf("the arm64 holder exited (%d) with its lifeline open", s)
	default:
	}
	lifeline.Close()
	if s := awaitStatus(status); s != 0 {
		t.Fatalf("arm64 holder's exit: %d", s)
	}

	_, _, status, lifeline, err = start(&syscall.Credential{Uid: 65534, Gid: 65534})
	lifeline.Close()
	if err == nil || err.Error() != "holder could not take an empty root: operation not permitted" {
		t.Errorf("an arm64 holder without CAP_SYS_CHROOT: %v", err)
	}
	if s := awaitStatus(status); s != 4 {
		t.Errorf("its exit: %d, want its step, 4", s)
	}
}
