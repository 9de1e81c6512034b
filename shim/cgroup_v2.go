package shim

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
)

// cgroupV2 is a container's cgroup on a v2 host.
type cgroupV2 struct {
	dir string
}

func (c cgroupV2) file(name string) string { return filepath.Join(c.dir, name) }

func (c cgroupV2) metrics() (*anypb.Any, error) {
	if _, err := os.Stat(c.dir); err != nil {
		return nil, fmt.Errorf("cgroup stats: %w", err)
	}
	m := &v2stats.Metrics{
		Pids: &v2stats.PidsStat{Current: readUint(c.file("pids.current"), 0), Limit: readUint(c.file("pids.max"), math.MaxUint64)},
		CPU:  &v2stats.CPUStat{},
		Memory: &v2stats.MemoryStat{
			Usage:        readUint(c.file("memory.current"), 0),
			UsageLimit:   readUint(c.file("memory.max"), math.MaxUint64),
			MaxUsage:     readUint(c.file("memory.peak"), 0),
			SwapUsage:    readUint(c.file("memory.swap.current"), 0),
			SwapLimit:    readUint(c.file("memory.swap.max"), math.MaxUint64),
			SwapMaxUsage: readUint(c.file("memory.swap.peak"), 0),
		},
	}
	if kv, err := readKV(c.file("cpu.stat")); err == nil {
		fillByName(m.CPU.ProtoReflect(), kv, nil)
	}
	if kv, err := readKV(c.file("memory.stat")); err == nil {
		fillByName(m.Memory.ProtoReflect(), kv, nil)
	}
	if kv, err := readKV(c.file("memory.events")); err == nil {
		m.MemoryEvents = &v2stats.MemoryEvents{}
		fillByName(m.MemoryEvents.ProtoReflect(), kv, nil)
	}
	m.Io = &v2stats.IOStat{Usage: readIOStat(c.file("io.stat"))}
	return bareAny(m)
}

// readIOStat parses io.stat: "major:minor rbytes=N wbytes=N rios=N wios=N ...".
func readIOStat(path string) []*v2stats.IOEntry {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []*v2stats.IOEntry
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		major, minor, ok := strings.Cut(f[0], ":")
		if !ok {
			continue
		}
		e := &v2stats.IOEntry{}
		e.Major, _ = strconv.ParseUint(major, 10, 64)
		e.Minor, _ = strconv.ParseUint(minor, 10, 64)
		kv := map[string]uint64{}
		for _, pair := range f[1:] {
			k, v, _ := strings.Cut(pair, "=")
			kv[k], _ = strconv.ParseUint(v, 10, 64)
		}
		fillByName(e.ProtoReflect(), kv, nil)
		out = append(out, e)
	}
	return out
}

// oomNotifier watches memory.events (and cgroup.events, which changes when
// the cgroup empties) with inotify; an OOM is the oom_kill counter going up.
func (c cgroupV2) oomNotifier() (int, func() (bool, bool), error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return -1, nil, fmt.Errorf("inotify: %w", err)
	}
	for _, name := range []string{"memory.events", "cgroup.events"} {
		if _, err := unix.InotifyAddWatch(fd, c.file(name), unix.IN_MODIFY); err != nil {
			unix.Close(fd)
			return -1, nil, fmt.Errorf("watch %s: %w", name, err)
		}
	}
	last, _ := readOOMKills(c.file("memory.events"))
	check := func() (oom, gone bool) {
		var buf [4096]byte
		for { // drain the inotify events
			if n, _ := unix.Read(fd, buf[:]); n <= 0 {
				break
			}
		}
		n, err := readOOMKills(c.file("memory.events"))
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
	kv, err := readKV(path)
	if err != nil {
		return 0, err
	}
	n, ok := kv["oom_kill"]
	if !ok {
		return 0, errors.New("no oom_kill in memory.events")
	}
	return n, nil
}
