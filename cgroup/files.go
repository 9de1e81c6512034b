package cgroup

import (
	"bytes"
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

// readFile reads a cgroup (or proc) file into buf, grown if it is too
// small, without an os.File and without asking the file's size: cgroupfs
// says 4 KiB for every file, so os.ReadFile took a 4.5 KiB buffer for each
// number read. Measured on cgroup v1: 60 KB of garbage per Stats, 15 KB
// with this; a pod's shim is asked for statistics every second or two.
func readFile(path string, buf []byte) ([]byte, error) {
	if path == "" {
		return nil, &fs.PathError{Op: "open", Path: path, Err: unix.ENOENT}
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	buf = buf[:cap(buf)]
	n := 0
	for {
		if n == len(buf) {
			buf = append(buf, make([]byte, max(len(buf), 512))...)
		}
		m, err := unix.Read(fd, buf[n:])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		case m == 0:
			return buf[:n], nil
		}
		n += m
	}
}

// isGone says whether err is what reading a removed cgroup's file gives.
func isGone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV)
}

// readKV reads a file of "key value" lines. An unparsable value is left out.
func readKV(path string) (map[string]uint64, error) {
	var buf [2048]byte
	data, err := readFile(path, buf[:0])
	if err != nil {
		return nil, err
	}
	kv := map[string]uint64{}
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte("\n"))
		k, v, ok := bytes.Cut(bytes.TrimSpace(line), []byte(" "))
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64); err == nil {
			kv[string(k)] = n
		}
	}
	return kv, nil
}

// readUint reads a one-number file; "max" reads as max (the caller's value
// for no limit). A missing or odd file reads as 0: the statistics of a
// controller the cgroup lacks are zero, as containerd reports them.
func readUint(path string, max uint64) uint64 {
	var buf [64]byte
	data, err := readFile(path, buf[:0])
	if err != nil {
		return 0
	}
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return max
	}
	n, _ := strconv.ParseUint(s, 10, 64)
	return n
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
