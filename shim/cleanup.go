package shim

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/mount"
	"github.com/tether-shim/tether/oci"
)

// FinalExit is how a container's init ended, as the delete action reports it.
type FinalExit struct {
	Pid    int
	Status int
	At     time.Time
}

// Cleanup removes what a lost shim left of container id in bundle: the
// runtime's container (killing what still runs), the rootfs mount and the
// shim's files. It reports the init's real exit status when the shim recorded
// one, and 137 (killed) otherwise.
func Cleanup(ctx context.Context, bundle, ns, id string, log *slog.Logger) (FinalExit, error) {
	if err := ValidateID("container", id); err != nil {
		return FinalExit{}, err
	}
	cfg, err := oci.LoadConfig(bundle)
	if err != nil {
		log.Warn("read runtime config, using defaults", "error", err)
	}
	final := FinalExit{Status: 128 + int(unix.SIGKILL), At: time.Now()}
	if rt, err := oci.New(bundle, ns, cfg); err != nil {
		log.Warn("no runtime to delete the container with", "error", err)
	} else if err := rt.Delete(ctx, id, true); err != nil && !oci.IsNotExist(err) {
		log.Warn("runtime delete", "error", err)
	}
	if err := mount.UnmountAll(filepath.Join(bundle, "rootfs")); err != nil {
		return final, err
	}
	if pid, err := runc.ReadPidFile(filepath.Join(bundle, initPidFile)); err == nil {
		final.Pid = pid
	}
	if status, at, err := ReadExitFile(filepath.Join(bundle, initExitFile)); err == nil {
		final.Status, final.At = status, at
	}
	removeShimFiles(bundle)
	return final, nil
}

// removeShimFiles removes the files the shim keeps in a bundle.
func removeShimFiles(bundle string) {
	for _, pattern := range []string{initPidFile, initExitFile, oci.ConfigFile, "exec-*.pid", "exec-*.exit", ".runtime-*.log"} {
		matches, _ := filepath.Glob(filepath.Join(bundle, pattern))
		for _, m := range matches {
			os.Remove(m)
		}
	}
}
