package manager

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/bundle"
	"github.com/tether-shim/tether/mount"
	"github.com/tether-shim/tether/oci"
	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox"
	"github.com/tether-shim/tether/shim"
)

// deleteTimeout bounds the whole delete action.
const deleteTimeout = 30 * time.Second

// Delete implements the "delete" action: containerd lost the shim of
// a container and asks for what it left to be removed. It prints a
// DeleteResponse on stdout.
func Delete(o Options, log *slog.Logger) error {
	dir := o.Bundle
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		dir = wd
	}
	ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
	defer cancel()
	r := reaper.New()
	runc.Monitor = r
	go r.Run(ctx)

	resp, err := cleanupBundle(ctx, dir, o.Namespace, o.ID, log)
	if err != nil {
		return err
	}
	data, err := proto.Marshal(resp)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(data)
	return err
}

// cleanupBundle removes what a lost shim left of container id in dir: the
// runtime's container (killing what still runs), the rootfs mount, the
// shim's files and its socket (unless a shim of the group still answers on
// it). It reports the init's real exit when the shim recorded one, and 137
// (killed) otherwise.
func cleanupBundle(ctx context.Context, dir, ns, id string, log *slog.Logger) (*task.DeleteResponse, error) {
	if err := shim.ValidateID("container", id); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, sandbox.RecordFile)); err == nil {
		return cleanupSandbox(ctx, dir)
	}
	cfg, err := oci.LoadConfig(dir)
	if err != nil {
		log.Warn("read runtime config, using defaults", "error", err)
	}
	if rt, err := oci.New(dir, ns, cfg); err != nil {
		log.Warn("no runtime to delete the container with", "error", err)
	} else if err := rt.Delete(ctx, id, true); err != nil && !oci.IsNotExist(err) {
		log.Warn("runtime delete", "error", err)
	}
	if err := mount.UnmountAll(filepath.Join(dir, "rootfs")); err != nil {
		return nil, err
	}
	if err := mount.RemoveIdmapDirs(dir); err != nil {
		return nil, err
	}
	resp := &task.DeleteResponse{ExitStatus: 128 + uint32(unix.SIGKILL), ExitedAt: timestamppb.Now()}
	if pid, err := runc.ReadPidFile(filepath.Join(dir, bundle.InitPidFile)); err == nil {
		resp.Pid = uint32(pid)
	}
	if status, at, err := bundle.ReadExit(bundle.ExitFile(dir, "")); err == nil {
		resp.ExitStatus, resp.ExitedAt = uint32(status), timestamppb.New(at)
	}
	bundle.RemoveShimFiles(dir)
	removeStaleSocket(dir)
	return resp, nil
}

// cleanupSandbox cleans up after the lost shim of a pod sandbox (a bundle
// with the sandbox's record; one without was never started, and has only
// the socket to lose): the pod's holder, files and shared memory. It
// reports the holder's recorded exit, or 137.
func cleanupSandbox(ctx context.Context, dir string) (*task.DeleteResponse, error) {
	exit, _, err := sandbox.Cleanup(ctx, dir)
	if err != nil {
		return nil, err
	}
	resp := &task.DeleteResponse{ExitStatus: 128 + uint32(unix.SIGKILL), ExitedAt: timestamppb.Now()}
	if exit != nil {
		resp.Pid, resp.ExitStatus, resp.ExitedAt = uint32(exit.Pid), uint32(exit.Status), timestamppb.New(exit.Time)
	}
	removeStaleSocket(dir)
	return resp, nil
}

// removeStaleSocket removes the lost shim's socket, unless a shim (of another
// container of the group) still answers on it.
func removeStaleSocket(dir string) {
	data, err := os.ReadFile(filepath.Join(dir, bundle.AddressFile))
	if err != nil {
		return
	}
	path := strings.TrimPrefix(strings.TrimSpace(string(data)), "unix://")
	if st, err := os.Lstat(path); err != nil || st.Mode()&os.ModeSocket == 0 {
		return // only ever a socket the address file names
	}
	if socketAnswers(path) {
		return
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		fmt.Fprintf(os.Stderr, "remove stale shim socket: %v\n", err)
	}
}
