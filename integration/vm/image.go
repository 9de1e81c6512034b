package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// recipe is the image's recipe as source: this file, the initramfs and the
// files installed in the guest. Any change to them is a new image (the
// cache key hashes them), so an edit never meets an image built by the old
// recipe.
//
//go:embed image.go initramfs.go guest/image
var recipe embed.FS

// guestPackages are the guest's Debian packages beyond mmdebstrap's minbase:
// the stock kernel, systemd as PID 1 (with D-Bus, which runc's systemd
// cgroup driver talks to), Debian's containerd 1.6 and runc, crun, static
// busybox (the test image), the CNI plugins and iptables for pods with a
// network of their own, the libraries the host's CRIU 4.1.1 build links,
// and a few tools for debugging by hand in make vm-shell.
func guestPackages() []string {
	return []string{
		"linux-image-amd64", "systemd", "systemd-sysv", "dbus", "udev", "kmod",
		"containerd", "runc", "crun", "busybox-static",
		"containernetworking-plugins", "iptables", "iproute2",
		"libprotobuf-c1", "libnl-3-200", "libnet1", "libgnutls30", "libnftables1", "libbsd0",
		"procps", "psmisc", "util-linux", "e2fsprogs", "xfsprogs", "lsof", "strace", "less", "ca-certificates",
	}
}

// image is a built VM image: its directory holds the decompressed kernel,
// the initramfs and the root file system.
type image struct {
	Dir    string
	Kernel string // the kernel release, e.g. 6.1.0-41-amd64
	// BuildSeconds is how long the build took.
	BuildSeconds float64
	// Packages are the installed packages' versions.
	Packages map[string]string
}

func (im *image) vmlinux() string { return filepath.Join(im.Dir, "vmlinux") }
func (im *image) initrd() string  { return filepath.Join(im.Dir, "initrd.cpio") }
func (im *image) rootfs() string  { return filepath.Join(im.Dir, "rootfs.ext4") }

// imageFreeSpace is the room left on the root file system for the tests
// (every boot writes to a throwaway overlay of it: snapshot=on).
const imageFreeSpace = 3 << 30

// ensureImage returns the image for this recipe and this machine's apt
// sources, building it into cache/vm-KEY if it is not there. Concurrent
// builders wait for each other (a lock) and build into KEY.tmp, renamed
// once complete.
func ensureImage(ctx context.Context, cache string, rebuild bool) (*image, error) {
	sources, err := aptSources()
	if err != nil {
		return nil, err
	}
	key, err := imageKey(ctx, sources)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cache, "vm-"+key)
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	if im, err := loadImage(dir); err == nil && !rebuild {
		return im, nil
	}
	slog.Info("building the VM image (once per recipe and apt sources; cached)", "dir", dir)
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	start := time.Now()
	im, err := buildImage(ctx, tmp, sources)
	if err != nil {
		return nil, fmt.Errorf("build the VM image in %s: %w", tmp, err)
	}
	im.BuildSeconds = time.Since(start).Seconds()
	info, err := json.MarshalIndent(im, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "image.json"), info, 0o644); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	slog.Info("VM image built", "dir", dir, "kernel", im.Kernel, "took", time.Since(start).Round(time.Second))
	return loadImage(dir)
}

// loadImage reads a complete image's description (image.json is written last).
func loadImage(dir string) (*image, error) {
	data, err := os.ReadFile(filepath.Join(dir, "image.json"))
	if err != nil {
		return nil, err
	}
	im := &image{}
	if err := json.Unmarshal(data, im); err != nil {
		return nil, fmt.Errorf("%s/image.json: %w", dir, err)
	}
	im.Dir = dir
	return im, nil
}

// aptSources are this machine's apt sources files, which the guest is
// built from: no mirror is named anywhere else.
func aptSources() ([]string, error) {
	var files []string
	if data, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				files = append(files, "/etc/apt/sources.list")
				break
			}
		}
	}
	for _, pattern := range []string{"*.list", "*.sources"} {
		found, _ := filepath.Glob(filepath.Join("/etc/apt/sources.list.d", pattern))
		files = append(files, found...)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no apt sources in /etc/apt")
	}
	sort.Strings(files)
	return files, nil
}

// imageKey hashes what the image is made of: the recipe, the package list,
// the release and the apt sources, and the versions apt would install of
// the listed packages today (a new kernel or containerd in the archive is a
// new image).
func imageKey(ctx context.Context, sources []string) (string, error) {
	h := sha256.New()
	err := fs.WalkDir(recipe, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := recipe.ReadFile(path)
		fmt.Fprintf(h, "recipe %s %d\n", path, len(data))
		h.Write(data)
		return err
	})
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h, "packages %q\nrelease %s\n", guestPackages(), codename())
	for _, f := range sources {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "sources %s %d\n", f, len(data))
		h.Write(data)
	}
	out, err := exec.CommandContext(ctx, "apt-cache", append([]string{"policy"}, guestPackages()...)...).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache policy: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if l := strings.TrimSpace(line); strings.HasSuffix(l, ":") && !strings.Contains(l, " ") || strings.HasPrefix(l, "Candidate:") {
			fmt.Fprintln(h, l)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// codename is this machine's Debian release: its apt sources name it.
func codename() string {
	data, _ := os.ReadFile("/etc/os-release")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VERSION_CODENAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return "bookworm"
}

// buildImage builds the image into dir: a Debian root from this machine's
// apt sources, set up to boot fast and run a job from the host; the
// decompressed kernel (qemu boots its ELF through the PVH entry); a tiny
// initramfs; an ext4 image of the root.
func buildImage(ctx context.Context, dir string, sources []string) (*image, error) {
	root := filepath.Join(dir, "root")
	args := []string{"--variant=minbase", "--include=" + strings.Join(guestPackages(), ","),
		// Documentation and translations: nothing the guest reads.
		"--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
		"--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
		codename(), root}
	if err := step(ctx, "mmdebstrap", append(args, sources...)...); err != nil {
		return nil, err
	}
	if err := setUpRoot(root); err != nil {
		return nil, err
	}
	im := &image{Dir: dir}
	var err error
	if im.Kernel, err = extractKernel(ctx, root, im.vmlinux()); err != nil {
		return nil, err
	}
	if err := writeInitramfs(ctx, root, im.Kernel, im.initrd()); err != nil {
		return nil, err
	}
	if im.Packages, err = installedPackages(ctx, root); err != nil {
		return nil, err
	}
	if err := makeDisk(ctx, root, im.rootfs(), imageFreeSpace); err != nil {
		return nil, err
	}
	return im, os.RemoveAll(root)
}

// setUpRoot installs the guest's files and units and turns off what only
// slows a throwaway boot down.
func setUpRoot(root string) error {
	files := map[string]string{
		"etc/hostname":   "tether-vm\n",
		"etc/hosts":      "127.0.0.1 localhost\n127.0.1.1 tether-vm\n::1 localhost\n",
		"etc/fstab":      "/dev/vda / ext4 rw,noatime 0 0\n",
		"etc/machine-id": "7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e\n", // set: not a first boot (no preset-all)
		"etc/systemd/journald.conf.d/volatile.conf": "[Journal]\nStorage=volatile\n",
	}
	for name, content := range files {
		if err := writeFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	guestFiles := map[string]struct {
		dest string
		mode os.FileMode
	}{
		"guest/image/tether-shares":         {"usr/local/sbin/tether-shares", 0o755},
		"guest/image/tether-shares.service": {"etc/systemd/system/tether-shares.service", 0o644},
		"guest/image/tether-job":            {"usr/local/sbin/tether-job", 0o755},
		"guest/image/tether-job.service":    {"etc/systemd/system/tether-job.service", 0o644},
		"guest/image/autologin.conf":        {"etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf", 0o644},
		"guest/image/profile.sh":            {"etc/profile.d/tether.sh", 0o644},
	}
	for src, f := range guestFiles {
		data, err := recipe.ReadFile(src)
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(root, f.dest), data, f.mode); err != nil {
			return err
		}
	}
	links := map[string]string{
		"etc/systemd/system/multi-user.target.wants/tether-shares.service": "/etc/systemd/system/tether-shares.service",
		"etc/systemd/system/multi-user.target.wants/tether-job.service":    "/etc/systemd/system/tether-job.service",
	}
	// e2scrub_reap costs ~11 s of CPU per boot under TCG; the timers only
	// wake a throwaway VM up. Everything below is masked.
	for _, unit := range []string{"e2scrub_reap.service", "e2scrub_all.timer", "fstrim.timer", "apt-daily.timer",
		"apt-daily-upgrade.timer", "systemd-tmpfiles-clean.timer", "dpkg-db-backup.timer"} {
		links["etc/systemd/system/"+unit] = "/dev/null"
	}
	for name, target := range links {
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		os.Remove(path)
		if err := os.Symlink(target, path); err != nil {
			return err
		}
	}
	// Debian's initramfs: the VM boots a tiny one of its own.
	initrds, _ := filepath.Glob(filepath.Join(root, "boot", "initrd.img-*"))
	for _, f := range initrds {
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	// The system containerd is not started at boot: the suites start their
	// own; `systemctl start containerd` starts it by hand.
	return removeIfExists(filepath.Join(root, "etc/systemd/system/multi-user.target.wants/containerd.service"))
}

// extractKernel writes the kernel of the root's only /boot/vmlinuz-* to
// vmlinux, decompressed: qemu boots that ELF directly through its PVH note,
// seconds faster under TCG than decompressing in the guest.
func extractKernel(ctx context.Context, root, vmlinux string) (string, error) {
	found, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(found) != 1 {
		return "", fmt.Errorf("kernels in %s/boot: %v, want one", root, found)
	}
	release := strings.TrimPrefix(filepath.Base(found[0]), "vmlinuz-")
	data, err := os.ReadFile(found[0])
	if err != nil {
		return "", err
	}
	at := bytes.Index(data, []byte("\xfd7zXZ\x00"))
	if at < 0 {
		return "", fmt.Errorf("%s: no xz payload", found[0])
	}
	out, err := os.Create(vmlinux)
	if err != nil {
		return "", err
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, "xz", "-dc", "--single-stream")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(data[at:]), out, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("decompress %s: %w", found[0], err)
	}
	return release, out.Close()
}

// makeDisk writes the tree at root into an ext4 image with free bytes to
// spare.
func makeDisk(ctx context.Context, root, path string, free int64) error {
	out, err := exec.CommandContext(ctx, "du", "-sb", root).Output()
	if err != nil {
		return fmt.Errorf("du %s: %w", root, err)
	}
	var used int64
	fmt.Sscan(string(out), &used)
	size := (used + used/5 + free) >> 20
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-d", root, path, fmt.Sprintf("%dM", size))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 -d %s: %w: %s", root, err, out)
	}
	return nil
}

// installedPackages lists the root's packages and versions.
func installedPackages(ctx context.Context, root string) (map[string]string, error) {
	out, err := exec.CommandContext(ctx, "dpkg-query", "--admindir", filepath.Join(root, "var/lib/dpkg"),
		"-W", "-f", "${Package} ${Version}\n").Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-query: %w", err)
	}
	pkgs := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if name, version, ok := strings.Cut(line, " "); ok {
			pkgs[name] = version
		}
	}
	return pkgs, nil
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, mode)
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// step runs a build command, its output going to stderr.
func step(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}
