package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// notFoundIfGone wraps err with what was being done, and with
// errdefs.ErrNotFound when err says the cgroup is gone: a missing file, or
// ENODEV from a cgroup being removed.
func notFoundIfGone(what string, err error) error {
	if isGone(err) {
		return fmt.Errorf("%s: %w: %w", what, errdefs.ErrNotFound, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// isGone says whether err is what reading a removed cgroup's file gives.
func isGone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV)
}

// fillByName sets the uint64 fields of m named like the keys of kv (or like
// alias[key]): the stats messages name their fields after the cgroupfs keys.
func fillByName(m protoreflect.Message, kv map[string]uint64, alias map[string]string) {
	fields := m.Descriptor().Fields()
	for k, v := range kv {
		name := k
		if a, ok := alias[k]; ok {
			name = a
		}
		if fd := fields.ByName(protoreflect.Name(name)); fd != nil && fd.Kind() == protoreflect.Uint64Kind && !fd.IsList() {
			m.Set(fd, protoreflect.ValueOfUint64(v))
		}
	}
}

// bareAny packs m as containerd's typeurl does: the type URL is the
// message's bare full name.
func bareAny(m proto.Message) (*anypb.Any, error) {
	data, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal %s: %w", proto.MessageName(m), err)
	}
	return &anypb.Any{TypeUrl: string(proto.MessageName(m)), Value: data}, nil
}

// procsTree reads cgroup.procs of dir and of every group below it: the
// pids, sorted, each once. A child group removed meanwhile is skipped; dir
// itself missing is errdefs.ErrNotFound.
func procsTree(dir string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			return nil
		}
		if err == nil {
			var data []byte
			if data, err = os.ReadFile(filepath.Join(path, "cgroup.procs")); err == nil {
				for _, f := range strings.Fields(string(data)) {
					if pid, err := strconv.Atoi(f); err == nil {
						pids = append(pids, pid)
					}
				}
				return nil
			}
		}
		if path != dir && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV)) {
			return fs.SkipDir
		}
		return err
	})
	if err != nil {
		return nil, notFoundIfGone("processes of cgroup "+dir, err)
	}
	slices.Sort(pids)
	return slices.Compact(pids), nil
}
