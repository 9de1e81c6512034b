// Command imagetools is the programs of the conformance suites' stand-in
// images that busybox has no applet for, picked by the name it runs under
// (a static binary, the image's only program besides busybox):
//
//   - pause: the pod sandbox's pause (registry.k8s.io/pause): waits for
//     SIGINT or SIGTERM and exits 0, reaping orphans meanwhile;
//   - nginx: the web servers (e2e nginx, containerd's nginx, cri-tools'
//     hostnet-nginx): serves /usr/share/nginx/html on -port (80) and writes
//     its pid to /var/run/nginx.pid and "start worker processes" to a
//     /dev/stderr it opens, as nginx does, under the name nginx;
//   - nnp: the e2e nonewprivs checker, installed set-uid root: prints
//     "Effective uid: N";
//   - stress: `stress -m 1 --vm-bytes SIZE --vm-hang 0 -t SECS` of the e2e
//     resource-consumer image: holds SIZE of touched memory for SECS;
//   - ipcs, pgrep: `ipcs -m` and `pgrep PATTERN` of the e2e busybox image
//     (Debian's busybox has neither applet).
package main

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	var err error
	name := filepath.Base(os.Args[0])
	if strings.HasPrefix(os.Args[0], nginxTitle) {
		name = "nginx"
	}
	switch name {
	case "pause":
		err = pause()
	case "nginx":
		err = nginx(os.Args[1:])
	case "nnp":
		fmt.Printf("Effective uid: %d\n", os.Geteuid())
	case "stress":
		err = stress(os.Args[1:])
	case "ipcs":
		err = ipcs()
	case "pgrep":
		err = pgrep(os.Args[1:])
	default:
		err = fmt.Errorf("unknown program %q (pause, nginx, nnp, stress, ipcs, pgrep)", os.Args[0])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", filepath.Base(os.Args[0]), err)
		os.Exit(1)
	}
}

// pause waits for SIGINT or SIGTERM, reaping the pod's orphans (it is the
// pod's PID 1 when the pod shares a PID namespace).
func pause() error {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			return nil
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
	return nil
}

// nginxTitle is how nginx's master process names itself (its
// /proc/PID/cmdline): critest looks for "master process".
const nginxTitle = "nginx: master process"

// nginx serves a directory over HTTP, as nginx's default site does.
func nginx(args []string) error {
	if !strings.HasPrefix(os.Args[0], nginxTitle) {
		// Retitled as nginx's master process: argv[0] is what cmdline
		// shows; the executable's name (comm, which pidof sees) stays nginx.
		self, err := os.Executable()
		if err != nil {
			return err
		}
		argv := append([]string{nginxTitle + " nginx -g daemon off;"}, args...)
		return syscall.Exec(self, argv, os.Environ())
	}
	fs := flag.NewFlagSet("nginx", flag.ContinueOnError)
	port := fs.Int("port", 80, "port to listen on")
	root := fs.String("root", "/usr/share/nginx/html", "directory to serve")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// nginx logs to /dev/stderr, which it opens anew: in a user
	// namespace that works only if the container's root owns the pipe.
	logf, err := os.OpenFile("/dev/stderr", os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("[emerg] open() \"/dev/stderr\" failed: %w", err)
	}
	defer logf.Close()
	if err := os.MkdirAll("/var/run", 0o755); err != nil {
		return err
	}
	if err := os.WriteFile("/var/run/nginx.pid", []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(logf, "%s [notice] %d#%d: start worker processes\n", time.Now().Format("2006/01/02 15:04:05"), os.Getpid(), os.Getpid())
	srv := &http.Server{Addr: ":" + strconv.Itoa(*port), Handler: http.FileServer(http.Dir(*root)), ReadHeaderTimeout: time.Minute}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT)
	go func() {
		<-sigs
		srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// stress holds --vm-bytes of touched memory for -t seconds (the flags of
// stress(1) that the tests use).
func stress(args []string) error {
	fs := flag.NewFlagSet("stress", flag.ContinueOnError)
	fs.Int("m", 1, "memory workers (one is run)")
	size := fs.String("vm-bytes", "256M", "memory to hold: N, NK, NM or NG")
	fs.Int("vm-hang", 0, "ignored: the memory is held until the end")
	secs := fs.Int("t", 0, "seconds to run (0: until killed)")
	// stress(1) takes long options with two dashes; flag takes both.
	if err := fs.Parse(args); err != nil {
		return err
	}
	n, err := parseSize(*size)
	if err != nil {
		return err
	}
	mem := make([]byte, n)
	for i := 0; i < len(mem); i += 4096 {
		mem[i] = 1
	}
	if *secs > 0 {
		time.Sleep(time.Duration(*secs) * time.Second)
	} else {
		select {}
	}
	if mem[0] != 1 { // keeps mem alive to the end
		return errors.New("memory lost")
	}
	return nil
}

func parseSize(s string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(s, "K"), strings.HasSuffix(s, "k"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"), strings.HasSuffix(s, "m"):
		mult = 1 << 20
	case strings.HasSuffix(s, "G"), strings.HasSuffix(s, "g"):
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	return n * mult, nil
}

// ipcs prints the shared memory segments as busybox's `ipcs -m` does.
func ipcs() error {
	data, err := os.ReadFile("/proc/sysvipc/shm")
	if err != nil {
		return err
	}
	fmt.Printf("\n------ Shared Memory Segments --------\n%-10s %-10s %-10s %-10s %-10s %-10s %-10s\n",
		"key", "shmid", "owner", "perms", "bytes", "nattch", "status")
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for _, l := range lines[1:] { // after the header
		f := strings.Fields(l)
		if len(f) < 8 {
			continue
		}
		key, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return fmt.Errorf("/proc/sysvipc/shm: %q: %w", l, err)
		}
		fmt.Printf("0x%08x %-10s %-10s %-10s %-10s %-10s\n", uint32(key), f[1], f[7], f[2], f[3], f[6])
	}
	fmt.Println()
	return nil
}

// pgrep prints the pids of the processes whose name matches the pattern
// (busybox's pgrep without options); it fails if none does.
func pgrep(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: pgrep PATTERN")
	}
	re, err := regexp.Compile(args[0])
	if err != nil {
		return err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	found := false
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err == nil && re.MatchString(strings.TrimSpace(string(comm))) {
			fmt.Println(pid)
			found = true
		}
	}
	if !found {
		os.Exit(1)
	}
	return nil
}
