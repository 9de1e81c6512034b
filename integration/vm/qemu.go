package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"
)

// share is a host directory the guest mounts at /mnt/TAG (9p).
type share struct {
	Tag, Path string
	ReadOnly  bool
}

// machine is how a VM is booted.
type machine struct {
	image  *image
	disk   string // a second disk, read-only (the job's binaries), or ""
	accel  string // "kvm" or "tcg"
	cpus   int
	memMiB int
	shares []share
	// kernelArgs are more kernel arguments (-append: debugging a boot).
	kernelArgs string
}

// kernelArgs: the console on the first serial port, quiet, no fsck (every
// boot starts from the same clean image), cgroup v2 as Debian 12 has it by
// default; a panic powers the VM off (-no-reboot).
const kernelArgs = "console=ttyS0 quiet loglevel=4 fsck.mode=skip panic=1 systemd.unified_cgroup_hierarchy=1"

// qemuArgs are qemu's arguments up to the serial ports.
func (m *machine) qemuArgs(extraKernelArgs string) []string {
	// -nodefaults: no CD-ROM, NIC, VGA or default serial port to probe.
	args := []string{"-machine", "q35", "-nodefaults", "-smp", fmt.Sprint(m.cpus), "-m", fmt.Sprintf("%dM", m.memMiB),
		"-kernel", m.image.vmlinux(), "-initrd", m.image.initrd(),
		"-append", strings.Join(strings.Fields(kernelArgs+" "+extraKernelArgs+" "+m.kernelArgs), " "),
		// snapshot=on: writes go to a throwaway overlay, the image stays
		// as built; cache=unsafe: that overlay is never flushed.
		"-drive", "file=" + m.image.rootfs() + ",format=raw,if=virtio,snapshot=on,cache=unsafe",
		"-nic", "none", "-no-reboot"}
	if m.disk != "" {
		args = append(args, "-drive", "file="+m.disk+",format=raw,if=virtio,readonly=on")
	}
	if m.accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		// No svm/vmx: udev would load KVM for nothing.
		args = append(args, "-accel", "tcg,thread=multi", "-cpu", "max,-svm,-vmx")
	}
	for _, s := range m.shares {
		opt := "local,path=" + s.Path + ",mount_tag=" + s.Tag + ",security_model=none"
		if s.ReadOnly {
			opt += ",readonly=on"
		}
		args = append(args, "-virtfs", opt)
	}
	return args
}

// chooseAccel picks KVM where it boots a stock kernel, else TCG.
// TETHER_VM_ACCEL=kvm|tcg decides instead. A /dev/kvm without hardware
// virtualisation under it (no vmx or svm flag: a software nested
// hypervisor, as on the project's machines) runs a stock kernel in its
// instruction emulator, 30-100 times slower than TCG: TCG without trying.
// Otherwise the image's kernel is booted once under KVM to the initramfs,
// which says so on the console and powers off.
func chooseAccel(ctx context.Context, im *image) string {
	switch a := os.Getenv("TETHER_VM_ACCEL"); a {
	case "kvm", "tcg":
		return a
	case "":
	default:
		slog.Warn("TETHER_VM_ACCEL is kvm or tcg; probing", "got", a)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg"
	}
	f.Close()
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	if !bytes.Contains(cpuinfo, []byte(" vmx")) && !bytes.Contains(cpuinfo, []byte(" svm")) {
		return "tcg"
	}
	m := &machine{image: im, accel: "kvm", cpus: 1, memMiB: 512}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", append(m.qemuArgs("tether.probe"), "-display", "none", "-serial", "stdio", "-monitor", "none")...)
	out, _ := cmd.Output()
	if bytes.Contains(out, []byte("tether-probe-ok")) {
		return "kvm"
	}
	slog.Info("KVM did not boot the kernel within a minute: TCG")
	return "tcg"
}

// boot runs the VM until it powers off (or ctx ends: then it is killed).
// The console (the first serial port) goes to console; the second serial
// port, the job's report stream, comes to stream line by line. (An emulated
// UART keeps to its 115200 baud, 11 KB/s: the stream carries no test
// output, which the guest writes to its results share.) Without a job the
// guest only mounts its shares: interactive boots use shell instead.
func (m *machine) boot(ctx context.Context, console string, stream func(line string)) (*os.ProcessState, error) {
	// No login on the console: a job does not wait for udev to announce
	// ttyS0 (90 s and more under TCG on a loaded machine).
	args := append(m.qemuArgs("systemd.mask=serial-getty@ttyS0.service"), "-display", "none", "-monitor", "none",
		"-serial", "file:"+console, "-serial", "stdio")
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		stream(strings.TrimRight(sc.Text(), "\r"))
	}
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return cmd.ProcessState, fmt.Errorf("qemu: %w", err)
	}
	return cmd.ProcessState, nil
}

// shell boots the VM with its console on this terminal (Ctrl-A X quits).
func (m *machine) shell(ctx context.Context) error {
	args := append(m.qemuArgs(""), "-nographic", "-serial", "mon:stdio")
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	return cmd.Run()
}
