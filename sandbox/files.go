package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/mount"
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

// podFiles are the files containerd's CRI bind-mounts into every container
// of a pod when they exist (internal/cri/server/container_create.go,
// linuxContainerMounts): /etc/hostname, /etc/hosts and /etc/resolv.conf
// from <cri root>/sandboxes/<id>/, /dev/shm from <cri state>/sandboxes/<id>/shm.
// For a pause container containerd's own controller writes them; for a
// shim sandbox the shim does, the same way, or the containers go without
// the pod's DNS settings and shared memory. A nil *podFiles does nothing.
type podFiles struct {
	RootDir  string `json:"root_dir"`  // <cri root>/sandboxes/<id>
	StateDir string `json:"state_dir"` // <cri state>/sandboxes/<id>
}

// criFiles finds the CRI's directories from the sandbox bundle's place.
func criFiles(bundle, id string) (*podFiles, error) {
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
	f := &podFiles{
		RootDir:  filepath.Join(filepath.Dir(rootController), criPluginDir, "sandboxes", id),
		StateDir: filepath.Join(filepath.Dir(stateController), criPluginDir, "sandboxes", id),
	}
	return f, nil
}

// check refuses directories that are not a pod's in the CRI's directories
// (a record that names others is never acted on).
func (f *podFiles) check() error {
	for _, dir := range []string{f.RootDir, f.StateDir} {
		sandboxes := filepath.Dir(dir)
		if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir || filepath.Base(sandboxes) != "sandboxes" ||
			filepath.Base(filepath.Dir(sandboxes)) != criPluginDir || shim.ValidateID("sandbox", filepath.Base(dir)) != nil {
			return fmt.Errorf("pod files: %s is not a pod's directory of the CRI", dir)
		}
	}
	return nil
}

func (f *podFiles) shm() string { return filepath.Join(f.StateDir, "shm") }

// setUp writes the pod's files and mounts its /dev/shm, as containerd's
// pod sandbox controller does (setupSandboxFiles).
func (f *podFiles) setUp(p Pod) error {
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
	resolv, err := resolvConf(p)
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
	if !p.OwnIPC {
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
func resolvConf(p Pod) ([]byte, error) {
	if p.DNS == nil {
		data, err := os.ReadFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("pod files: %w", err)
		}
		return data, nil
	}
	var b strings.Builder
	if s := p.DNS.GetSearches(); len(s) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(s, " "))
	}
	for _, s := range p.DNS.GetServers() {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if o := p.DNS.GetOptions(); len(o) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(o, " "))
	}
	return []byte(b.String()), nil
}

// unmountShm unmounts the pod's /dev/shm (once its containers are gone).
func (f *podFiles) unmountShm() error {
	if f == nil {
		return nil
	}
	return mount.UnmountAll(f.shm())
}

// remove unmounts and removes all of the pod's files.
func (f *podFiles) remove() error {
	if f == nil {
		return nil
	}
	if err := f.check(); err != nil {
		return err
	}
	if err := f.unmountShm(); err != nil {
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
