package shim

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Leftover is what Cleanup reports of a container whose shim was lost.
type Leftover struct {
	Pid        int
	ExitStatus int
	ExitedAt   time.Time
}

// Cleanup removes what a lost shim left of container id in bundle: the
// runtime's container (killing what still runs), the rootfs mount and the
// shim's files. It reports the init's real exit status when the shim recorded
// one, and 137 (killed) otherwise.
func Cleanup(ctx context.Context, bundle, ns, id string, log *slog.Logger) (Leftover, error) {
	if err := validateID("container", id); err != nil {
		return Leftover{}, err
	}
	cfg, err := LoadRuntimeConfig(bundle)
	if err != nil {
		log.Warn("read runtime config, using defaults", "error", err)
	}
	left := Leftover{ExitStatus: 128 + int(unix.SIGKILL), ExitedAt: time.Now()}
	if rt, err := newRuntime(bundle, ns, cfg); err != nil {
		log.Warn("no runtime to delete the container with", "error", err)
	} else if err := rt.Delete(ctx, id, true); err != nil && !isNotExist(err) {
		log.Warn("runtime delete", "error", err)
	}
	if err := unmountAll(filepath.Join(bundle, "rootfs")); err != nil {
		return left, err
	}
	if pid, err := runc.ReadPidFile(filepath.Join(bundle, initPidFile)); err == nil {
		left.Pid = pid
	}
	if status, at, err := ReadExitFile(filepath.Join(bundle, initExitFile)); err == nil {
		left.ExitStatus, left.ExitedAt = status, at
	}
	removeShimFiles(bundle)
	return left, nil
}

// isNotExist tells a runtime's "container does not exist" apart, which is
// what a delete after a completed delete gets.
func isNotExist(err error) bool {
	var rerr *RuntimeError
	return errors.As(err, &rerr) && strings.Contains(rerr.Message, "does not exist")
}

// removeShimFiles removes the files the shim keeps in a bundle.
func removeShimFiles(bundle string) {
	for _, pattern := range []string{initPidFile, initExitFile, runtimeConfigFile, "exec-*.pid", "exec-*.exit", ".runtime-*.log"} {
		matches, _ := filepath.Glob(filepath.Join(bundle, pattern))
		for _, m := range matches {
			os.Remove(m)
		}
	}
}

// WriteAddressFile writes the shim's address into the bundle's address file.
func WriteAddressFile(path, address string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	return writeFileAtomic(abs, []byte(address))
}
