// Package podns makes a pod's namespaces for a shim that holds the pod
// without a pause container: on a thread of the shim made for it, which
// joins the pod's network namespace, makes new UTS and IPC namespaces as
// the pod asks, sets the pod's hostname and namespaced sysctls there, and
// then either binds its UTS and IPC namespaces to files (Bind: the
// namespaces live on without any process) or forks the pod's holder (which
// inherits them). The thread is thrown away afterwards, never reused: the
// Go runtime ends a thread whose goroutine exits while locked to it.
package podns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/mount"
)

// Setup is what a pod's namespaces need.
type Setup struct {
	// NetNS is the network namespace containerd made for the pod; empty
	// for a pod on the node's network.
	NetNS string
	// UTS and IPC ask for new UTS and IPC namespaces.
	UTS, IPC bool
	// Hostname is set in the new UTS namespace.
	Hostname string
	// Sysctls are set in the pod's namespaces, keys as "net.ipv4.x"
	// (checked by the caller: only keys of namespaces the pod has).
	Sysctls map[string]string
}

// Enter runs then on a new thread in the pod's namespaces, made and set
// up as s says, and returns its error; the thread is not used again.
// Every thread or process then starts from there is in the pod's
// namespaces from its first instruction.
func Enter(s Setup, then func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread: the Go runtime never ends it, it would stay
			// in the pod's namespaces (and keep them) for good. Held here,
			// it cannot be the thread of the goroutine that does the work.
			done <- Enter(s, then)
			runtime.UnlockOSThread()
			return
		}
		// Deliberately never unlocked: a thread moved into the pod's
		// namespaces must not run anything else.
		if err := s.apply(); err != nil {
			done <- err
			return
		}
		done <- then()
	}()
	return <-done
}

// apply moves the calling thread into the pod's namespaces and sets them
// up. Sysctls are written from this thread: /proc/sys resolves the
// network, IPC and UTS namespaces of the thread that opens it.
func (s Setup) apply() error {
	if s.NetNS != "" {
		fd, err := unix.Open(s.NetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open pod network namespace: %w", err)
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("join pod network namespace %s: %w", s.NetNS, err)
		}
	}
	var flags int
	if s.UTS {
		flags |= unix.CLONE_NEWUTS
	}
	if s.IPC {
		flags |= unix.CLONE_NEWIPC
	}
	if flags != 0 {
		if err := unix.Unshare(flags); err != nil {
			return fmt.Errorf("new pod namespaces: %w", err)
		}
	}
	if s.UTS && s.Hostname != "" {
		if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("set pod hostname %q: %w", s.Hostname, err)
		}
	}
	for key, value := range s.Sysctls {
		path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
		if err := os.WriteFile(path, []byte(value), 0); err != nil {
			return fmt.Errorf("set pod sysctl %s: %w", key, err)
		}
	}
	return nil
}

// Mounts are the files a pod's own UTS and IPC namespaces are bound to,
// under a directory of the pod's ("" for a namespace the pod shares with
// the node). A namespace lives as long as its bind mount, or a process in
// it.
type Mounts struct {
	UTS, IPC string
}

// Dir is where a pod's namespaces are bound, in its bundle.
func Dir(bundle string) string { return filepath.Join(bundle, "ns") }

// For is where the namespaces a pod has of its own are bound (Dir).
func For(bundle string, uts, ipc bool) Mounts {
	var m Mounts
	if uts {
		m.UTS = filepath.Join(Dir(bundle), "uts")
	}
	if ipc {
		m.IPC = filepath.Join(Dir(bundle), "ipc")
	}
	return m
}

// Bind binds the calling thread's UTS and IPC namespaces to m's files
// (from Enter's then: the thread is the pod's). What it bound is
// unmounted again on an error.
func (m Mounts) Bind() (err error) {
	defer func() {
		if err != nil {
			m.Unmount()
		}
	}()
	for _, b := range []struct{ kind, path string }{{"uts", m.UTS}, {"ipc", m.IPC}} {
		if b.path == "" {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(b.path), 0o700); err != nil {
			return fmt.Errorf("pod namespaces: %w", err)
		}
		f, err := os.OpenFile(b.path, os.O_CREATE|os.O_RDONLY, 0o400)
		if err != nil {
			return fmt.Errorf("pod namespaces: %w", err)
		}
		f.Close()
		if err := unix.Mount("/proc/thread-self/ns/"+b.kind, b.path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind pod %s namespace to %s: %w", b.kind, b.path, err)
		}
	}
	return nil
}

// Unmount unbinds m's namespaces and removes their files and directory
// (a namespace goes with its last user); nothing bound is fine.
func (m Mounts) Unmount() error {
	var errs []error
	for _, path := range []string{m.UTS, m.IPC} {
		if path == "" {
			continue
		}
		if err := mount.UnmountAll(path); err != nil {
			errs = append(errs, err)
			continue // never remove a file that may still be a mount point
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, path := range []string{m.UTS, m.IPC} {
		if path != "" {
			// The directory once empty; another namespace's file may stay.
			if err := os.Remove(filepath.Dir(path)); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
				errs = append(errs, err)
			}
			break
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unbind pod namespaces: %w", err)
	}
	return nil
}
