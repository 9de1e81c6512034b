package shim

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// cgroup is a container's cgroup: its metrics and its out-of-memory notices.
type cgroup interface {
	// metrics returns the cgroup's statistics in the form containerd decodes
	// (io.containerd.cgroups.v1.Metrics or ...v2.Metrics).
	metrics() (*anypb.Any, error)
	// oomNotifier returns a descriptor that becomes readable when something
	// happens to the cgroup's memory, and a check that reads what happened:
	// oom is true for a new OOM kill, gone when the cgroup no longer exists.
	oomNotifier() (fd int, check func() (oom, gone bool), err error)
}

// loadCgroup finds the cgroup of the container whose init is pid.
func loadCgroup(pid int) (cgroup, error) {
	if cgroups.Mode() == cgroups.Unified {
		path, err := cgroup2.PidGroupPath(pid)
		if err != nil {
			return nil, fmt.Errorf("cgroup of pid %d: %w", pid, err)
		}
		return loadCgroupV2("/sys/fs/cgroup", path)
	}
	cg, err := cgroup1.Load(cgroup1.PidPath(pid), cgroup1.WithHierarchy(cgroup1.Default))
	if err != nil {
		return nil, fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	return cgroupV1{cg}, nil
}

// loadCgroupV2 loads the cgroup v2 group (a path below mountpoint).
func loadCgroupV2(mountpoint, group string) (cgroup, error) {
	m, err := cgroup2.Load(group, cgroup2.WithMountpoint(mountpoint))
	if err != nil {
		return nil, fmt.Errorf("load cgroup %s: %w", group, err)
	}
	return cgroupV2{m: m, dir: filepath.Join(mountpoint, group)}, nil
}

type cgroupV1 struct{ cg cgroup1.Cgroup }

func (c cgroupV1) metrics() (*anypb.Any, error) {
	m, err := c.cg.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		return nil, fmt.Errorf("cgroup stats: %w", err)
	}
	return bareAny(m)
}

func (c cgroupV1) oomNotifier() (int, func() (bool, bool), error) {
	fd, err := c.cg.OOMEventFD()
	if err != nil {
		return -1, nil, fmt.Errorf("oom event fd: %w", err)
	}
	efd := int(fd)
	unix.SetNonblock(efd, true) // check must never block the watcher
	check := func() (oom, gone bool) {
		// The eventfd also fires when the cgroup is removed.
		var buf [8]byte
		unix.Read(efd, buf[:])
		if c.cg.State() == cgroup1.Deleted {
			return false, true
		}
		return true, false
	}
	return efd, check, nil
}

type cgroupV2 struct {
	m   *cgroup2.Manager
	dir string
}

func (c cgroupV2) metrics() (*anypb.Any, error) {
	m, err := c.m.Stat()
	if err != nil {
		return nil, fmt.Errorf("cgroup stats: %w", err)
	}
	return bareAny(m)
}

func (c cgroupV2) oomNotifier() (int, func() (bool, bool), error) {
	fd, _, err := c.m.MemoryEventFD()
	if err != nil {
		return -1, nil, err
	}
	unix.SetNonblock(fd, true) // check must never block the watcher
	last, _ := readOOMKills(filepath.Join(c.dir, "memory.events"))
	check := func() (oom, gone bool) {
		var buf [4096]byte
		for { // drain the inotify events
			if n, _ := unix.Read(fd, buf[:]); n <= 0 {
				break
			}
		}
		n, err := readOOMKills(filepath.Join(c.dir, "memory.events"))
		if err != nil {
			return false, true
		}
		oom, last = n > last, n
		return oom, false
	}
	return fd, check, nil
}

// readOOMKills reads the oom_kill counter of a cgroup v2 memory.events file.
func readOOMKills(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == "oom_kill" {
			return strconv.ParseUint(v, 10, 64)
		}
	}
	return 0, errors.New("no oom_kill in memory.events")
}

// bareAny packs m as containerd's typeurl does: the type URL is the
// message's bare full name.
func bareAny(m proto.Message) (*anypb.Any, error) {
	data, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return &anypb.Any{TypeUrl: string(proto.MessageName(m)), Value: data}, nil
}

func closeFD(fd int) { unix.Close(fd) }
