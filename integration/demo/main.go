// Command demo starts a private containerd, runs a busybox container through
// tether (runtime io.containerd.tether.v2) and prints what it wrote. It needs
// root, containerd, ctr, runc, busybox-static and containerd-shim-tether-v2
// on PATH (make install puts it in /usr/local/bin).
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	shimPath, err := exec.LookPath("containerd-shim-tether-v2")
	if err != nil {
		return fmt.Errorf("tether is not installed (run make install): %w", err)
	}
	dir, err := os.MkdirTemp("", "tether-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctd, err := harness.Start(harness.Options{ShimDir: filepath.Dir(shimPath), Dir: dir, Namespace: "tether-demo"})
	if err != nil {
		return err
	}
	defer ctd.Stop()
	fmt.Printf("private containerd running at %s (log %s)\n", ctd.Address, ctd.LogPath)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := ctd.ImportBusybox(ctx, "/bin/busybox"); err != nil {
		return err
	}
	args := []string{"run", "--rm", "--runtime", harness.Runtime, harness.BusyboxImageName, "tether-demo",
		"sh", "-c", "echo hello from a busybox container run by tether; echo pid $$ in $(hostname); uname -sr"}
	fmt.Printf("$ ctr %q\n", args)
	res, err := ctd.Ctr(ctx, nil, args...)
	if err != nil {
		return err
	}
	fmt.Print(res.Stdout)
	fmt.Printf("container exited with status %d\n", res.ExitCode)
	return nil
}
