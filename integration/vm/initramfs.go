package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// initScript is the initramfs's /init: load the few modules the root disk
// needs, mount it and hand over to systemd. Debian's initramfs-tools image
// runs udev first, 7 s more per boot under TCG. With tether.probe on the
// kernel command line it only says it got there (the KVM probe).
const initScript = `#!/bin/sh
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
if grep -qw tether.probe /proc/cmdline; then
	echo tether-probe-ok >/dev/ttyS0
	poweroff -f
fi
while read -r module; do insmod "$module"; done </modules
i=0
while [ ! -b /dev/vda ]; do
	i=$((i + 1))
	if [ $i -gt 600 ]; then echo "initramfs: no /dev/vda" >/dev/ttyS0; poweroff -f; fi
	sleep 0.1
done
mount -t ext4 -o rw,noatime /dev/vda /root || { echo "initramfs: cannot mount /dev/vda" >/dev/ttyS0; poweroff -f; }
umount /proc
umount /dev
exec switch_root /root /sbin/init
`

// writeInitramfs writes a newc cpio archive: busybox, /init, and the
// modules that reach the root disk, with what they need (decompressed:
// busybox's insmod takes plain ones).
func writeInitramfs(ctx context.Context, root, release, path string) error {
	var a cpio
	for _, d := range []string{"bin", "dev", "proc", "root", "modules.d"} {
		a.dir(d)
	}
	busybox, err := os.ReadFile(filepath.Join(root, "bin", "busybox"))
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	a.file("bin/busybox", busybox, 0o755)
	for _, applet := range []string{"sh", "mount", "umount", "insmod", "switch_root", "sleep", "grep", "poweroff", "echo"} {
		a.symlink("bin/"+applet, "busybox")
	}
	a.file("init", []byte(initScript), 0o755)

	// modprobe takes one module per call (the rest would be its options);
	// the guest's own, in its root: the host may have none.
	var out []byte
	for _, m := range []string{"virtio_pci", "virtio_blk", "ext4"} {
		deps, err := exec.CommandContext(ctx, "chroot", root, "/sbin/modprobe", "--show-depends", "-S", release, m).Output()
		if err != nil {
			return fmt.Errorf("initramfs: modprobe --show-depends %s: %w", m, err)
		}
		out = append(out, deps...)
	}
	var order []string
	seen := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "insmod" || seen[f[1]] {
			continue // "builtin NAME": in the kernel already
		}
		seen[f[1]] = true
		src := filepath.Join(root, f[1])
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		name := filepath.Base(src)
		if ext := filepath.Ext(name); ext == ".xz" || ext == ".zst" {
			tool := map[string]string{".xz": "xz", ".zst": "zstd"}[ext]
			cmd := exec.CommandContext(ctx, tool, "-dc")
			cmd.Stdin = bytes.NewReader(data)
			if data, err = cmd.Output(); err != nil {
				return fmt.Errorf("initramfs: decompress %s: %w", src, err)
			}
			name = strings.TrimSuffix(name, ext)
		}
		a.file("modules.d/"+name, data, 0o644)
		order = append(order, "/modules.d/"+name)
	}
	if len(order) == 0 {
		return fmt.Errorf("initramfs: modprobe found no module to load: %s", out)
	}
	a.file("modules", []byte(strings.Join(order, "\n")+"\n"), 0o644)
	return os.WriteFile(path, a.close(), 0o644)
}

// cpio writes the newc format the kernel unpacks an initramfs from.
type cpio struct {
	buf bytes.Buffer
	ino int
}

func (a *cpio) entry(name string, mode uint32, data []byte) {
	a.ino++
	fmt.Fprintf(&a.buf, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		a.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	a.buf.WriteString(name + "\x00")
	a.pad()
	a.buf.Write(data)
	a.pad()
}

func (a *cpio) pad() {
	for a.buf.Len()%4 != 0 {
		a.buf.WriteByte(0)
	}
}

func (a *cpio) dir(name string)                         { a.entry(name, 0o040755, nil) }
func (a *cpio) file(name string, data []byte, perm int) { a.entry(name, 0o100000|uint32(perm), data) }
func (a *cpio) symlink(name, target string)             { a.entry(name, 0o120777, []byte(target)) }

func (a *cpio) close() []byte {
	a.entry("TRAILER!!!", 0, nil)
	return a.buf.Bytes()
}
