package sandbox

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// readyMessage is what a holder writes on its report pipe once the pod's
// namespaces are set up.
const readyMessage = "ok"

// holderOOMScoreAdj is the pause container's score (containerd's CRI gives
// sandboxes -998): the OOM killer should take a pod's workload first.
const holderOOMScoreAdj = "-998"

// HolderMain is the holder process: started by the shim (startHolder) in
// the pod's namespaces, it sets the pod's hostname and sysctls, drops its
// privileges, reports on fd 4 and then only waits: for EOF on fd 3 (the
// shim stopped the pod, or died), or SIGTERM/SIGINT, and reaps the orphans
// it inherits as init of the pod's pid namespace. It returns the exit code.
func HolderMain(args []string) int {
	runtime.LockOSThread()
	report := os.NewFile(4, "report")
	fs := flag.NewFlagSet(HolderName, flag.ContinueOnError)
	fs.SetOutput(report)
	fs.String("id", "", "the pod sandbox's id (for ps)")
	hostname := fs.String("hostname", "", "the pod's hostname")
	var sysctls sysctlFlags
	fs.Var(&sysctls, "sysctl", "key=value, set in the pod's namespaces (repeated)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// The first signals are caught before anything can send them.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT)
	if err := setUpPod(*hostname, sysctls); err != nil {
		fmt.Fprintf(report, "%v\n", err)
		return 1
	}
	lifeline, err := lifelineOf(3)
	if err != nil {
		fmt.Fprintf(report, "%v\n", err)
		return 1
	}
	report.WriteString(readyMessage)
	report.Close()
	if err := releaseCodePages(); err != nil {
		// Only memory is at stake: the holder holds the pod all the same.
		fmt.Fprintf(os.Stderr, "%s: %v\n", HolderName, err)
	}

	eof := make(chan struct{})
	go func() {
		var b [64]byte
		for {
			if _, err := lifeline.Read(b[:]); err != nil {
				close(eof)
				return
			}
		}
	}()
	for {
		select {
		case <-eof:
			return 0
		case s := <-sigs:
			if s != unix.SIGCHLD {
				return 0
			}
			reapAll()
		}
	}
}

// setUpPod sets what the pod's namespaces need, then drops the holder's
// privileges: a container sharing its pid namespace sees it as pid 1, and
// must not reach the node through /proc/1 (its root is the node's).
func setUpPod(hostname string, sysctls sysctlFlags) error {
	// comm would be "exe" (the holder runs /proc/self/exe).
	_ = os.WriteFile("/proc/self/comm", []byte(HolderName), 0)
	// Lowering it needs a privilege some hosts withhold: best effort.
	_ = os.WriteFile("/proc/self/oom_score_adj", []byte(holderOOMScoreAdj), 0)
	if hostname != "" {
		if err := unix.Sethostname([]byte(hostname)); err != nil {
			return fmt.Errorf("set pod hostname %q: %w", hostname, err)
		}
	}
	for _, kv := range sysctls {
		key, value, _ := strings.Cut(kv, "=")
		path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
		if err := os.WriteFile(path, []byte(value), 0); err != nil {
			return fmt.Errorf("set pod sysctl %s: %w", key, err)
		}
	}
	return dropPrivileges()
}

// dropPrivileges makes the holder non-dumpable (its /proc entries are
// root's, and only CAP_SYS_PTRACE reaches them), sets no_new_privs and
// clears every capability, on every thread. A binary linked with cgo (a
// -race test binary) cannot change all threads at once: there only the
// holder's own thread (HolderMain locks it) drops them.
func dropPrivileges() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("set holder non-dumpable: %w", err)
	}
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0)
	if errno == syscall.ENOTSUP {
		errno = errnoOf(unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
	}
	if errno != 0 {
		return fmt.Errorf("holder no_new_privs: %w", errno)
	}
	hdr := &unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := &[2]unix.CapUserData{}
	_, _, errno = syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	if errno == syscall.ENOTSUP {
		errno = errnoOf(unix.Capset(hdr, &data[0]))
	}
	if errno != 0 {
		return fmt.Errorf("holder drop capabilities: %w", errno)
	}
	return nil
}

func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return 0
}

// lifelineOf makes fd a pollable file: reading it parks no thread.
func lifelineOf(fd int) (*os.File, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("holder lifeline: %w", err)
	}
	return os.NewFile(uintptr(fd), "lifeline"), nil
}

// reapAll reaps every child that has exited: as init of a pod's pid
// namespace the holder inherits the pod's orphans.
func reapAll() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
	}
}

// sysctlFlags collects repeated -sysctl key=value flags.
type sysctlFlags []string

func (s *sysctlFlags) String() string { return strings.Join(*s, ",") }

func (s *sysctlFlags) Set(v string) error {
	if !strings.Contains(v, "=") {
		return fmt.Errorf("sysctl %q is not key=value", v)
	}
	*s = append(*s, v)
	return nil
}

// releaseCodePages drops the holder's mappings of its binary's read-only
// pages once it only waits. Starting the Go runtime and the shim's packages
// touched most of the binary (and the kernel maps the pages around every
// fault too), while a waiting holder runs a few pages of it: those it
// faults back in, one at a time, the rest stay in the page cache for the
// shims that run them. Only mappings with no page of their own (no copy-on-write copy)
// are dropped: those pages would be lost otherwise.
func releaseCodePages() error {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return fmt.Errorf("holder binary: %w", err)
	}
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return fmt.Errorf("holder mappings: %w", err)
	}
	type span struct{ start, end uint64 }
	var spans []span
	ours := false // the mapping being read is of exe, read-only and private
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 6 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":"):
			lo, hi, _ := strings.Cut(fields[0], "-")
			start, _ := strconv.ParseUint(lo, 16, 64)
			end, _ := strconv.ParseUint(hi, 16, 64)
			perms := fields[1]
			ours = fields[5] == exe && perms[1] != 'w' && perms[3] == 'p' && end > start
			if ours {
				spans = append(spans, span{start, end})
			}
		case ours && len(fields) >= 2 && fields[0] == "Anonymous:" && fields[1] != "0":
			spans, ours = spans[:len(spans)-1], false
		}
	}
	// All at once, last: what runs from here on is what the holder faults
	// back in.
	for _, sp := range spans {
		// MADV_RANDOM first: a fault then maps its own page only.
		for _, advice := range []uintptr{unix.MADV_RANDOM, unix.MADV_DONTNEED} {
			if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(sp.start), uintptr(sp.end-sp.start), advice); errno != 0 {
				return fmt.Errorf("release %x-%x: %w", sp.start, sp.end, errno)
			}
		}
	}
	return nil
}
