// Package podfiles writes the files containerd's CRI bind-mounts into every
// container of a pod when they exist: /etc/hostname, /etc/hosts and
// /etc/resolv.conf from <cri root>/sandboxes/<id>/, and a shared /dev/shm
// from <cri state>/sandboxes/<id>/shm. For a pause container containerd's
// own controller writes them; for a pod a shim holds without one the shim
// does, the same way, or the containers go without the pod's DNS settings
// and shared memory. It removes them again, also for the delete action
// after a lost shim (from the paths a record names, checked to be a pod's
// directories of the CRI, and nothing else).
package podfiles

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/mount"
	cri "github.com/tether-shim/tether/proto/cri"
	"github.com/tether-shim/tether/shim"
)

// Where containerd 2.x keeps what this needs (plugins/cri/runtime/plugin.go:
// the CRI's directories are <root>/io.containerd.grpc.v1.cri and
// <state>/io.containerd.grpc.v1.cri; plugins/sandbox/controller.go and
// core/runtime/v2/bundle.go: a shim sandbox's bundle is
// <state>/io.containerd.sandbox.controller.v1.shim/<namespace>/<id>, its
// "work" link points to the same place under <root>).
const (
	shimControllerDir = "io.containerd.sandbox.controller.v1.shim"
	criPluginDir      = "io.containerd.grpc.v1.cri"
)

// shmOptions make the pod's /dev/shm, as containerd's CRI makes it for a pause
// container (defaultShmSize, 64 MiB).
const shmOptions = "mode=1777,size=65536k"

// Files are a pod's files, where containerd's CRI looks for them
// (internal/cri/server/container_create.go, linuxContainerMounts). A nil
// *Files does nothing.
type Files struct {
	RootDir  string `json:"root_dir"`  // <cri root>/sandboxes/<id>
	StateDir string `json:"state_dir"` // <cri state>/sandboxes/<id>
}

// Find finds the CRI's directories from the sandbox bundle's place.
func Find(bundle, id string) (*Files, error) {
	nsDir := filepath.Dir(bundle)
	stateController := filepath.Dir(nsDir)
	if filepath.Base(bundle) != id || filepath.Base(stateController) != shimControllerDir {
		return nil, fmt.Errorf("bundle %s is not a shim sandbox's bundle of containerd 2.x", bundle)
	}
	work, err := os.Readlink(filepath.Join(bundle, "work"))
	if err != nil {
		return nil, fmt.Errorf("bundle work link: %w", err)
	}
	rootController := filepath.Dir(filepath.Dir(work))
	if filepath.Base(work) != id || filepath.Base(filepath.Dir(work)) != filepath.Base(nsDir) || filepath.Base(rootController) != shimControllerDir {
		return nil, fmt.Errorf("bundle work link %s is not where containerd 2.x puts it", work)
	}
	f := &Files{
		RootDir:  filepath.Join(filepath.Dir(rootController), criPluginDir, "sandboxes", id),
		StateDir: filepath.Join(filepath.Dir(stateController), criPluginDir, "sandboxes", id),
	}
	return f, nil
}

// Check refuses directories that are not a pod's in the CRI's directories
// (a record that names others is never acted on).
func (f *Files) Check() error {
	for _, dir := range []string{f.RootDir, f.StateDir} {
		sandboxes := filepath.Dir(dir)
		if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir || filepath.Base(sandboxes) != "sandboxes" ||
			filepath.Base(filepath.Dir(sandboxes)) != criPluginDir || shim.ValidateID("sandbox", filepath.Base(dir)) != nil {
			return fmt.Errorf("pod files: %s is not a pod's directory of the CRI", dir)
		}
	}
	return nil
}

func (f *Files) shm() string { return filepath.Join(f.StateDir, "shm") }

// Config is what a pod's files say.
type Config struct {
	// Hostname is the pod's; empty for the node's.
	Hostname string
	// DNS is the pod's resolver configuration; nil for the node's.
	DNS *cri.DNSConfig
	// Shm asks for a /dev/shm of the pod's (a pod with its own IPC
	// namespace); without, the containers use the node's.
	Shm bool
}

// SetUp writes the pod's files and mounts its /dev/shm, as containerd's
// pod sandbox controller does (setupSandboxFiles).
func (f *Files) SetUp(p Config) error {
	if f == nil {
		return nil
	}
	if err := os.MkdirAll(f.RootDir, 0o755); err != nil {
		return fmt.Errorf("pod files: %w", err)
	}
	hostname := p.Hostname
	if hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("pod files: hostname: %w", err)
		}
		hostname = h
	}
	resolv, err := resolvConf(p.DNS)
	if err != nil {
		return err
	}
	hosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		return fmt.Errorf("pod files: %w", err)
	}
	for name, data := range map[string][]byte{"hostname": []byte(hostname + "\n"), "hosts": hosts, "resolv.conf": resolv} {
		if err := os.WriteFile(filepath.Join(f.RootDir, name), data, 0o644); err != nil {
			return fmt.Errorf("pod files: %w", err)
		}
	}
	if !p.Shm {
		return nil // the containers use the node's /dev/shm
	}
	if err := os.MkdirAll(f.shm(), 0o700); err != nil {
		return fmt.Errorf("pod shared memory: %w", err)
	}
	if err := unix.Mount("shm", f.shm(), "tmpfs", unix.MS_NOEXEC|unix.MS_NOSUID|unix.MS_NODEV, shmOptions); err != nil {
		return fmt.Errorf("mount pod shared memory on %s: %w", f.shm(), err)
	}
	return nil
}

// resolvConf is the pod's resolv.conf: its DNS settings, or the node's.
func resolvConf(dns *cri.DNSConfig) ([]byte, error) {
	if dns == nil {
		data, err := os.ReadFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("pod files: %w", err)
		}
		return data, nil
	}
	var b strings.Builder
	if s := dns.GetSearches(); len(s) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(s, " "))
	}
	for _, s := range dns.GetServers() {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if o := dns.GetOptions(); len(o) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(o, " "))
	}
	return []byte(b.String()), nil
}

// UnmountShm unmounts the pod's /dev/shm (once its containers are gone).
func (f *Files) UnmountShm() error {
	if f == nil {
		return nil
	}
	return mount.UnmountAll(f.shm())
}

// Remove unmounts and removes all of the pod's files.
func (f *Files) Remove() error {
	if f == nil {
		return nil
	}
	if err := f.Check(); err != nil {
		return err
	}
	if err := f.UnmountShm(); err != nil {
		// Never remove a directory that may still have a mount under it.
		return fmt.Errorf("remove pod files: %w", err)
	}
	var errs []error
	for _, dir := range []string{f.RootDir, f.StateDir} {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove pod files: %w", err)
	}
	return nil
}
