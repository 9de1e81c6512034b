// Package nsinit runs a suite's test binary in namespaces of its own, under
// an init that is the calling binary again (MultiCall): a PID and mount
// namespace with a private /run, mounts of the run's own, a daemon kept
// running, and optionally a network namespace (NetNS); and it stands in
// for containerd (the wrapper) to add to each daemon's configuration what
// the run needs.
package nsinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The calling binary has two more jobs, picked by the name it is run under.
const (
	// initName runs as PID 1 of the run's own PID and mount namespace.
	initName = "conformance-init"
	// WrapperName is what the suites start as their daemon: it is on PATH
	// first, linked to the calling binary.
	WrapperName = "containerd"
)

// Environment the containerd wrapper reads.
const (
	envContainerd = "CONFORMANCE_CONTAINERD"       // the real daemon
	envDisabled   = "CONFORMANCE_DISABLED_PLUGINS" // comma-separated
	envImport     = "CONFORMANCE_IMPORT"           // a config file every daemon imports
	// envDaemon is the daemon the init keeps running (JSON Daemon),
	// for suites that expect one, as containerd's CI scripts start it.
	envDaemon = "CONFORMANCE_DAEMON"
	// envMounts are more mounts the init makes (JSON []Mount).
	envMounts = "CONFORMANCE_MOUNTS"
)

// StartInit makes cmd start under an init (this binary) of a new PID and
// mount namespace. Everything the run starts stays in them: the tests' `ps ax` sees only this
// run's processes, whatever is left running dies with the init, and /run
// (containerd's and any shim's sockets and state, runc's state) is a tmpfs
// of the run's own.
func StartInit(self string, cmd *exec.Cmd) {
	cmd.Args = append([]string{initName, cmd.Path}, cmd.Args[1:]...)
	cmd.Path = self
	cmd.SysProcAttr = &unix.SysProcAttr{
		Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS,
		Pdeathsig:  unix.SIGKILL, // if this process dies, so does the namespace
	}
}

// initMain is PID 1 of the namespace: it makes its mounts private, mounts
// /proc and /run afresh, starts the daemon envDaemon names (if any) and
// waits until it answers, runs argv, reaps every orphan (shims re-parent to
// it) and exits with argv's status, which ends the namespace.
func initMain(argv []string) error {
	if len(argv) == 0 {
		return errors.New("no command")
	}
	mounts := []struct{ source, target, fstype, data string }{
		{"proc", "/proc", "proc", ""},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	for _, m := range mounts {
		if err := unix.Mount(m.source, m.target, m.fstype, unix.MS_NOSUID|unix.MS_NODEV, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	if err := extraMounts(os.Getenv(envMounts)); err != nil {
		return err
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	d, err := startDaemon(os.Getenv(envDaemon))
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}})
	if err != nil {
		return fmt.Errorf("start %s: %w", path, err)
	}
	go func() {
		for s := range sigs {
			unix.Kill(pid, s.(unix.Signal))
		}
	}()
	for {
		var ws unix.WaitStatus
		p, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait: %w", err)
		}
		d.exited(p)
		if p != pid {
			continue
		}
		if ws.Signaled() {
			os.Exit(128 + int(ws.Signal()))
		}
		os.Exit(ws.ExitStatus())
	}
}

// A Mount is one the init makes in the run's mount namespace, on Target
// (made if missing): a bind mount of Source; or, with Upper, an overlay of
// Upper's files on Target's (Upper+".work" is overlayfs's work directory,
// on the same filesystem); or a tmpfs.
type Mount struct{ Source, Target, Upper string }

// extraMounts makes the mounts spec (JSON []mount; "" for none) names.
func extraMounts(spec string) error {
	if spec == "" {
		return nil
	}
	var mounts []Mount
	if err := json.Unmarshal([]byte(spec), &mounts); err != nil {
		return fmt.Errorf("%s: %w", envMounts, err)
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return err
		}
		var err error
		switch {
		case m.Source != "":
			err = unix.Mount(m.Source, m.Target, "", unix.MS_BIND|unix.MS_REC, "")
		case m.Upper != "":
			if err := os.MkdirAll(m.Upper+".work", 0o755); err != nil {
				return err
			}
			err = unix.Mount("overlay", m.Target, "overlay", 0,
				fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", m.Target, m.Upper, m.Upper+".work"))
		default:
			err = unix.Mount("tmpfs", m.Target, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755")
		}
		if err != nil {
			return fmt.Errorf("mount %q on %s: %w", m.Source, m.Target, err)
		}
	}
	return nil
}

// wrapperMain runs the real containerd with the config it is given and,
// added to it, the plugins envDisabled names disabled (the client suite) or
// envImport's config imported (the CRI suites: the machine's quirks);
// subcommands (config, oci-hook, ...) run as they are.
func wrapperMain(args []string) error {
	real := os.Getenv(envContainerd)
	if real == "" {
		return errors.New(envContainerd + " not set")
	}
	for _, a := range args {
		switch a {
		case "config", "oci-hook", "publish", "help", "h", "--help", "-h", "--version", "-v":
			return unix.Exec(real, append([]string{real}, args...), os.Environ())
		}
	}
	var config string
	var rest []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case (a == "-c" || a == "--config") && i+1 < len(args):
			config = args[i+1]
			i++
		case strings.HasPrefix(a, "-c=") || strings.HasPrefix(a, "--config="):
			_, config, _ = strings.Cut(a, "=")
		default:
			rest = append(rest, a)
		}
	}
	data := []byte("version = 2\n")
	if os.Getenv(envImport) != "" {
		data = []byte("version = 3\n")
	}
	if config != "" {
		var err error
		if data, err = os.ReadFile(config); err != nil {
			return err
		}
	}
	has := func(key string) bool {
		return slices.ContainsFunc(strings.Split(string(data), "\n"), func(l string) bool {
			return strings.HasPrefix(strings.TrimSpace(l), key)
		})
	}
	// A config that names its own disabled plugins or imports keeps them.
	if d := os.Getenv(envDisabled); d != "" && !has("disabled_plugins") {
		data = append([]byte(`disabled_plugins = ["`+strings.ReplaceAll(d, ",", `", "`)+"\"]\n"), data...)
	}
	if imp := os.Getenv(envImport); imp != "" && !has("imports") {
		data = append([]byte(fmt.Sprintf("imports = [%q]\n", imp)), data...)
	}
	f, err := os.CreateTemp("", "containerd-config-*.toml")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return unix.Exec(real, append([]string{real, "--config", f.Name()}, rest...), os.Environ())
}

// MultiCall does this binary's other jobs, and exits, when it is run under
// their names; otherwise it returns.
func MultiCall() {
	var err error
	switch filepath.Base(os.Args[0]) {
	case initName:
		err = initMain(os.Args[1:])
	case WrapperName:
		err = wrapperMain(os.Args[1:])
	default:
		return
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", filepath.Base(os.Args[0]), err)
	os.Exit(125)
}

// NetNS is a network namespace of the run's own, held by one OS thread
// that runs only what Do gives it: a socket opened there, or a process
// started there, is in the namespace. The CRI suites' pods get addresses
// from a bridge in it, with iptables rules of its own that nobody else
// sees, and the registry stand-in listens on its loopback.
type NetNS struct {
	do   chan func()
	done chan struct{}
}

// NewNetNS makes a network namespace with its loopback up.
func NewNetNS() (*NetNS, error) {
	n := &NetNS{do: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, and no other
		// goroutine ever runs in the namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare a network namespace: %w", err)
			return
		}
		if err := loopbackUp(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		for {
			select {
			case f := <-n.do:
				f()
			case <-n.done:
				return
			}
		}
	}()
	return n, <-errc
}

// Do runs f on the namespace's thread.
func (n *NetNS) Do(f func()) {
	ran := make(chan struct{})
	n.do <- func() { defer close(ran); f() }
	<-ran
}

// Close ends the thread; the namespace goes with the last socket or
// process in it.
func (n *NetNS) Close() { close(n.done) }

// loopbackUp brings up the calling thread's namespace's loopback.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}

// Setup is what the init and the wrapper are told, through the
// environment of the command StartInit starts.
type Setup struct {
	Containerd string   // the real containerd the wrapper runs
	Disabled   []string // plugins the wrapper disables in each daemon's configuration
	Import     string   // a configuration the wrapper makes each daemon import
	Daemon     *Daemon  // a daemon the init keeps running
	Mounts     []Mount  // mounts the init makes first
}

// Env is the setup as environment variables.
func (s Setup) Env() ([]string, error) {
	env := []string{envContainerd + "=" + s.Containerd, envDisabled + "=" + strings.Join(s.Disabled, ","),
		envImport + "=" + s.Import}
	if s.Daemon != nil {
		spec, err := json.Marshal(s.Daemon)
		if err != nil {
			return nil, err
		}
		env = append(env, envDaemon+"="+string(spec))
	}
	if len(s.Mounts) > 0 {
		mounts, err := json.Marshal(s.Mounts)
		if err != nil {
			return nil, err
		}
		env = append(env, envMounts+"="+string(mounts))
	}
	return env, nil
}
