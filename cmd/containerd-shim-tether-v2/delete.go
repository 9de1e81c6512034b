package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	runc "github.com/containerd/go-runc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim"
)

// cleanup implements the "delete" action: containerd lost the shim of a
// container and asks for what it left to be removed. It prints a
// DeleteResponse on stdout.
func cleanup(o options, log *slog.Logger) error {
	bundle := o.bundle
	if bundle == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		bundle = wd
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := reaper.New()
	runc.Monitor = r
	go r.Run(ctx)

	final, err := shim.Cleanup(ctx, bundle, o.namespace, o.id, log)
	if err != nil {
		return err
	}
	removeStaleSocket(bundle)
	data, err := proto.Marshal(&task.DeleteResponse{
		Pid:        uint32(final.Pid),
		ExitStatus: uint32(final.Status),
		ExitedAt:   timestamppb.New(final.At),
	})
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(data)
	return err
}

// removeStaleSocket removes the lost shim's socket, unless a shim (of another
// container of the group) still answers on it.
func removeStaleSocket(bundle string) {
	data, err := os.ReadFile(bundle + "/address")
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
