// Command fakeruntime is a fake OCI runtime for the shim's unit tests: enough
// of runc's CLI (create, start, exec, kill, delete, ps) for the shim, without
// namespaces, cgroups or root. Container processes are plain children that get
// re-parented to the test process, a subreaper. It is built by the tests.
//
// Faults are injected per bundle: a file named fail-<command> makes that
// command log its content as an error (as runc's JSON log does) and exit 1;
// a file named garble-pid makes create succeed with an unreadable pid file;
// a file named fake-proc, holding a directory, has create write the init's
// cgroup there as procfs would (PID/cgroup: the v2 group "/ID").
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		fakeInit(os.Args[2], os.Args[3:])
		return
	}
	if err := fakeRuntime(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// fakeInit waits for start, then becomes the container's process.
func fakeInit(state string, args []string) {
	for {
		if _, err := os.Stat(filepath.Join(state, "started")); err == nil {
			break
		}
		if _, err := os.Stat(state); err != nil {
			os.Exit(137) // deleted before start
		}
		time.Sleep(5 * time.Millisecond)
	}
	path, err := exec.LookPath(args[0])
	if err != nil {
		os.Exit(127)
	}
	syscall.Exec(path, args, os.Environ())
	os.Exit(126)
}

type fakeGlobal struct {
	root, log string
}

func fakeRuntime(args []string) error {
	var g fakeGlobal
	fs := flag.NewFlagSet("fake", flag.ContinueOnError)
	fs.StringVar(&g.root, "root", "", "")
	fs.StringVar(&g.log, "log", "", "")
	fs.String("log-format", "", "")
	fs.Bool("systemd-cgroup", false, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	os.MkdirAll(g.root, 0o700)
	rest := fs.Args()
	if len(rest) == 0 {
		return fmt.Errorf("no command")
	}
	// Every call is recorded, so tests can see which flags reached the runtime.
	if f, err := os.OpenFile(filepath.Join(g.root, "calls.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
		fmt.Fprintln(f, strings.Join(args, " "))
		f.Close()
	}
	cmd, rest := rest[0], rest[1:]
	sub := flag.NewFlagSet(cmd, flag.ContinueOnError)
	bundle := sub.String("bundle", "", "")
	pidFile := sub.String("pid-file", "", "")
	process := sub.String("process", "", "")
	sub.String("console-socket", "", "")
	sub.Bool("detach", false, "")
	sub.Bool("no-pivot", false, "")
	sub.Bool("no-new-keyring", false, "")
	all := sub.Bool("all", false, "")
	force := sub.Bool("force", false, "")
	sub.String("format", "", "")
	sub.String("resources", "", "")
	leaveRunning := sub.Bool("leave-running", false, "")
	for _, name := range []string{"image-path", "work-path", "parent-path", "manage-cgroups-mode", "empty-ns", "page-server"} {
		sub.String(name, "", "")
	}
	for _, name := range []string{"tcp-established", "ext-unix-sk", "shell-job", "file-locks", "lazy-pages", "pre-dump"} {
		sub.Bool(name, false, "")
	}
	if err := sub.Parse(rest); err != nil {
		return err
	}
	if sub.NArg() == 0 {
		return fmt.Errorf("%s: no container id", cmd)
	}
	id := sub.Arg(0)
	state := filepath.Join(g.root, id)
	if *bundle == "" {
		if b, err := os.ReadFile(filepath.Join(state, "bundle")); err == nil {
			*bundle = string(b)
		}
	}
	if msg, err := os.ReadFile(filepath.Join(*bundle, "fail-"+cmd)); err == nil {
		return g.fail("%s", strings.TrimSpace(string(msg)))
	}
	initPid := func() int {
		b, _ := os.ReadFile(filepath.Join(state, "pid"))
		pid, _ := strconv.Atoi(string(b))
		return pid
	}
	switch cmd {
	case "create":
		if _, err := os.Stat(state); err == nil {
			return g.fail("container with id exists: %s", id)
		}
		var spec specs.Spec
		data, err := os.ReadFile(filepath.Join(*bundle, "config.json"))
		if err != nil {
			return g.fail("read config: %v", err)
		}
		if err := json.Unmarshal(data, &spec); err != nil || spec.Process == nil {
			return g.fail("bad config: %v", err)
		}
		if err := os.MkdirAll(state, 0o700); err != nil {
			return err
		}
		os.WriteFile(filepath.Join(state, "bundle"), []byte(*bundle), 0o600)
		c := exec.Command(os.Args[0], append([]string{"init", state}, spec.Process.Args...)...)
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := c.Start(); err != nil {
			return g.fail("start init: %v", err)
		}
		os.WriteFile(filepath.Join(state, "pid"), []byte(strconv.Itoa(c.Process.Pid)), 0o600)
		if proc, err := os.ReadFile(filepath.Join(*bundle, "fake-proc")); err == nil {
			// The init's cgroup v2 group is "/ID", as the fake procfs
			// there says.
			dir := filepath.Join(string(proc), strconv.Itoa(c.Process.Pid))
			os.MkdirAll(dir, 0o755)
			os.WriteFile(filepath.Join(dir, "cgroup"), []byte("0::/"+id+"\n"), 0o644)
		}
		if _, err := os.Stat(filepath.Join(*bundle, "garble-pid")); err == nil {
			// A runtime that succeeds but leaves an unreadable pid file.
			return os.WriteFile(*pidFile, []byte("not a pid"), 0o600)
		}
		return os.WriteFile(*pidFile, []byte(strconv.Itoa(c.Process.Pid)), 0o600)
	case "start":
		if _, err := os.Stat(state); err != nil {
			return g.fail("container does not exist")
		}
		return os.WriteFile(filepath.Join(state, "started"), nil, 0o600)
	case "exec":
		if initPid() == 0 || syscall.Kill(initPid(), 0) != nil {
			return g.fail("cannot exec in a stopped container")
		}
		var p specs.Process
		data, err := os.ReadFile(*process)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(data, &p); err != nil {
			return err
		}
		c := exec.Command(p.Args[0], p.Args[1:]...)
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := c.Start(); err != nil {
			return g.fail("exec failed: %v", err)
		}
		f, _ := os.OpenFile(filepath.Join(state, "execs"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		fmt.Fprintf(f, "%d\n", c.Process.Pid)
		f.Close()
		return os.WriteFile(*pidFile, []byte(strconv.Itoa(c.Process.Pid)), 0o600)
	case "kill":
		sig, _ := strconv.Atoi(sub.Arg(1))
		if *all {
			// Like runc: every process of the container, running or not.
			for _, p := range execPids(state) {
				syscall.Kill(p, syscall.Signal(sig))
			}
		}
		pid := initPid()
		if pid == 0 || syscall.Kill(pid, 0) != nil {
			if *all {
				return nil
			}
			return g.fail("container not running")
		}
		return syscall.Kill(pid, syscall.Signal(sig))
	case "delete":
		if _, err := os.Stat(state); err != nil {
			return g.fail("container %s does not exist", id)
		}
		if pid := initPid(); *force && pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		return os.RemoveAll(state)
	case "pause", "resume":
		sig := syscall.SIGSTOP
		if cmd == "resume" {
			sig = syscall.SIGCONT
		}
		return syscall.Kill(initPid(), sig)
	case "update":
		_, err := io.Copy(io.Discard, os.Stdin)
		return err
	case "checkpoint":
		if !*leaveRunning {
			syscall.Kill(initPid(), syscall.SIGKILL)
		}
		return nil
	case "ps":
		pids := []int{}
		for _, p := range append([]int{initPid()}, execPids(state)...) {
			if p > 0 && syscall.Kill(p, 0) == nil {
				pids = append(pids, p)
			}
		}
		return json.NewEncoder(os.Stdout).Encode(pids)
	}
	return g.fail("unknown command %q", cmd)
}

func execPids(state string) []int {
	b, _ := os.ReadFile(filepath.Join(state, "execs"))
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// fail logs msg as runc does (a JSON line at level error) and fails.
func (g fakeGlobal) fail(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if g.log != "" {
		line, _ := json.Marshal(map[string]string{"level": "error", "msg": msg, "time": time.Now().Format(time.RFC3339)})
		f, err := os.OpenFile(g.log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err == nil {
			f.Write(append(line, '\n'))
			f.Close()
		}
	}
	return fmt.Errorf("%s", msg)
}
