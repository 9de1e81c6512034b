package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Runtime is tether's containerd runtime name.
const Runtime = "io.containerd.tether.v2"

// Options say which containerd to start and how.
type Options struct {
	ContainerdBinary string // containerd binary; "containerd" on PATH if empty
	CtrBinary        string // ctr binary; "ctr" on PATH if empty
	ShimDir          string // directory holding containerd-shim-tether-v2, first on containerd's PATH
	Dir              string // where root, state and sockets go; must exist
	Namespace        string // containerd namespace for ctr; "tether-it" if empty
	// ExtraConfig is appended to the generated config.toml.
	ExtraConfig string
	// EnableCRI keeps containerd's CRI plugin; it is disabled otherwise.
	EnableCRI bool
	// CgroupDriver places the containers of every `ctr run` (Ctr,
	// CtrCommand): with Systemd each gets SystemdCgroup = true and a
	// systemd cgroup path (systemdRunArgs); Cgroupfs ("" too) leaves ctr's
	// defaults.
	CgroupDriver CgroupDriver
	// PrivateNetwork runs containerd (and so its shims, the runtimes and
	// their hooks) in a network namespace of its own, loopback up, and a
	// mount namespace of its own (private propagation) with a tmpfs over
	// /var/lib: CNI plugins run by a hook make their bridge, iptables
	// rules and address leases there, never on the host's.
	PrivateNetwork bool
}

// Containerd is a private containerd daemon.
type Containerd struct {
	Options
	Address string // its GRPC socket
	Major   int    // major version (1 or 2)
	LogPath string
	cmd     *exec.Cmd
	done    chan error
}

// Start writes a config and starts containerd with its own root, state and
// address under o.Dir, then waits until it answers.
func Start(o Options) (*Containerd, error) {
	if o.ContainerdBinary == "" {
		o.ContainerdBinary = "containerd"
	}
	if o.CtrBinary == "" {
		o.CtrBinary = "ctr"
	}
	if o.Namespace == "" {
		o.Namespace = "tether-it"
	}
	c := &Containerd{Options: o, Address: filepath.Join(o.Dir, "containerd.sock"), LogPath: filepath.Join(o.Dir, "containerd.log")}
	major, err := majorVersion(o.ContainerdBinary)
	if err != nil {
		return nil, err
	}
	c.Major = major
	if err := os.WriteFile(filepath.Join(o.Dir, "config.toml"), []byte(c.config()), 0o644); err != nil {
		return nil, err
	}
	if o.CgroupDriver == Systemd {
		if err := os.WriteFile(filepath.Join(o.Dir, "systemd-cgroup.toml"), []byte(Systemd.OptionLine()), 0o644); err != nil {
			return nil, err
		}
	}
	if err := c.start(); err != nil {
		return nil, err
	}
	return c, nil
}

func majorVersion(binary string) (int, error) {
	out, err := exec.Command(binary, "--version").Output()
	if err != nil {
		return 0, fmt.Errorf("%s --version: %w", binary, err)
	}
	m := regexp.MustCompile(` v?(\d+)\.\d+`).FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no version in %q", out)
	}
	return strconv.Atoi(string(m[1]))
}

func (c *Containerd) config() string {
	var b strings.Builder
	version := 2
	if c.Major >= 2 {
		version = 3
	}
	fmt.Fprintf(&b, "version = %d\n", version)
	fmt.Fprintf(&b, "root = %q\nstate = %q\n", filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"))
	if !c.EnableCRI {
		if c.Major >= 2 {
			b.WriteString(`disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]` + "\n")
		} else {
			b.WriteString(`disabled_plugins = ["io.containerd.grpc.v1.cri"]` + "\n")
		}
	}
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n", c.Address)
	// Tests read forwarded events from the log: debug level in 1.x, trace in 2.x.
	level := "debug"
	if c.Major >= 2 {
		level = "trace"
	}
	fmt.Fprintf(&b, "[debug]\n  level = %q\n", level)
	// containerd's own deadlines for a shim's start, delete action and
	// shutdown (5, 5 and 3 s), stretched where the suite's are (a VM under
	// TCG: a dead shim's delete action was killed at 5 s, its bundle left).
	if Patience(time.Second) > time.Second {
		b.WriteString("[timeouts]\n")
		for _, t := range []struct {
			name string
			d    time.Duration
		}{{"shim.load", 5 * time.Second}, {"shim.cleanup", 5 * time.Second}, {"shim.shutdown", 3 * time.Second}} {
			fmt.Fprintf(&b, "  \"io.containerd.timeout.%s\" = %q\n", t.name, Patience(t.d).String())
		}
	}
	b.WriteString(c.ExtraConfig)
	return b.String()
}

func (c *Containerd) start() error {
	logf, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.ContainerdBinary, "--config", filepath.Join(c.Dir, "config.toml"))
	if c.PrivateNetwork {
		// unshare and sh exec containerd: the pid stays containerd's.
		cmd = exec.Command("unshare", "--mount", "--net", "--propagation", "private", "--",
			"sh", "-ec", `mount -t tmpfs -o mode=0755 tether-private /var/lib; mkdir -m 0700 /var/lib/cni; ip link set lo up; exec "$0" "$@"`,
			c.ContainerdBinary, "--config", filepath.Join(c.Dir, "config.toml"))
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Shims from ShimDir; then, for a containerd named by its path (2.x,
	// make containerd2), the runc shim built with it, not the one of
	// Debian's containerd on PATH.
	path := c.ShimDir
	if filepath.IsAbs(c.ContainerdBinary) {
		path += ":" + filepath.Dir(c.ContainerdBinary)
	}
	cmd.Env = append(os.Environ(), "PATH="+path+":"+os.Getenv("PATH"))
	// containerd 2.x looks for a shim in its working directory before PATH:
	// a stray binary where the tests run must not stand in for ShimDir's.
	cmd.Dir = c.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start containerd: %w", err)
	}
	logf.Close()
	c.cmd = cmd
	c.done = make(chan error, 1)
	go func() { c.done <- cmd.Wait() }()
	deadline := time.Now().Add(Patience(30 * time.Second))
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.Ctr(ctx, nil, "version")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case werr := <-c.done:
			return fmt.Errorf("containerd exited: %v; log:\n%s", werr, c.Log())
		default:
		}
		if time.Now().After(deadline) {
			c.Kill()
			return fmt.Errorf("containerd did not come up: %v; log:\n%s", err, c.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Pid is the daemon's pid.
func (c *Containerd) Pid() int { return c.cmd.Process.Pid }

// Log returns the tail of containerd's log (it includes the shims' logs).
func (c *Containerd) Log() string {
	data, _ := os.ReadFile(c.LogPath)
	if len(data) > 64<<10 {
		data = data[len(data)-64<<10:]
	}
	return string(data)
}

// Stop stops containerd with SIGTERM (SIGKILL after 10 s). Shims outlive it.
func (c *Containerd) Stop() error {
	if c.cmd == nil {
		return nil
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	c.cmd = nil
	return nil
}

// Kill kills containerd with SIGKILL, as a crash would.
func (c *Containerd) Kill() {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Kill()
	<-c.done
	c.cmd = nil
}

// Restart starts containerd again with the same configuration.
func (c *Containerd) Restart() error {
	if c.cmd != nil {
		return errors.New("containerd is running")
	}
	return c.start()
}

// Result is what a ctr run printed and how it ended.
type Result struct {
	Stdout, Stderr string
	ExitCode       int
}

// Ctr runs ctr against this containerd in its namespace. A non-zero exit is
// an error that also carries the output.
func (c *Containerd) Ctr(ctx context.Context, stdin io.Reader, args ...string) (Result, error) {
	cmd := c.CtrCommand(ctx, args...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: StripCtrWarnings(stderr.String()), ExitCode: cmd.ProcessState.ExitCode()}
	if err != nil {
		return res, fmt.Errorf("ctr %s: %w (stdout %q, stderr %q)", strings.Join(args, " "), err, trim(res.Stdout), trim(res.Stderr))
	}
	return res, nil
}

// CtrCommand returns an unstarted ctr command against this containerd. A
// `ctr run` is placed with the CgroupDriver; one that cannot be becomes a
// command that fails saying why.
func (c *Containerd) CtrCommand(ctx context.Context, args ...string) *exec.Cmd {
	if c.CgroupDriver == Systemd && len(args) > 0 && args[0] == "run" {
		var err error
		if args, err = c.systemdRunArgs(args); err != nil {
			return exec.CommandContext(ctx, "sh", "-c", `echo "$0" >&2; exit 2`, err.Error())
		}
	}
	full := append([]string{"--address", c.Address, "--namespace", c.Namespace}, args...)
	cmd := exec.CommandContext(ctx, c.CtrBinary, full...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func trim(s string) string {
	if len(s) > 2000 {
		return s[:1000] + " ... " + s[len(s)-1000:]
	}
	return s
}

// ImportBusybox builds the busybox image and imports it.
func (c *Containerd) ImportBusybox(ctx context.Context, busybox string) error {
	path := filepath.Join(c.Dir, "busybox-oci.tar")
	if err := WriteBusyboxImage(path, busybox); err != nil {
		return err
	}
	_, err := c.Ctr(ctx, nil, "images", "import", path)
	return err
}

// BuildShim builds tether from the module at moduleRoot into dir (or
// copies it from PrebuiltEnv's directory).
func BuildShim(moduleRoot, dir string) (string, error) {
	out := filepath.Join(dir, "containerd-shim-tether-v2")
	return out, BuildProgram(moduleRoot, "containerd-shim-tether-v2", out)
}

// FullLog returns all of containerd's log (with the shims' logs in it).
func (c *Containerd) FullLog() string {
	data, _ := os.ReadFile(c.LogPath)
	return string(data)
}

// StripCtrWarnings drops the log lines ctr itself prints to stderr (ctr 2.x
// warns about cgroup v1 hosts on every run), leaving the container's output.
func StripCtrWarnings(stderr string) string {
	var out []string
	for _, line := range strings.SplitAfter(stderr, "\n") {
		if strings.HasPrefix(line, "time=\"") && strings.Contains(line, "level=warning msg=\"DEPRECATION") {
			continue
		}
		out = append(out, line)
	}
	return strings.Join(out, "")
}
