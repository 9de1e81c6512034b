package cgroup

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/smallfile"
)

// v2 is a container's cgroup on a v2 host.
type v2 struct {
	dir string
	// root is where the v2 hierarchy is mounted.
	root string
}

// memcgPath is the cgroup's path as the kernel's log names it.
func (c *v2) memcgPath() string { return cgroupPathBelow(c.root, c.dir) }

func (c *v2) file(name string) string { return filepath.Join(c.dir, name) }

func (c *v2) Path() Path { return Path{V2: c.dir} }

func (c *v2) Metrics() (*anypb.Any, error) {
	// cpu.stat is in every v2 cgroup, whatever its controllers: it missing
	// means the cgroup is gone.
	cpuStat, err := smallfile.KV(c.file("cpu.stat"))
	if err != nil {
		return nil, notFoundIfGone("cgroup stats of "+c.dir, err)
	}
	m := &v2stats.Metrics{
		Pids: &v2stats.PidsStat{Current: smallfile.Uint(c.file("pids.current"), 0), Limit: smallfile.Uint(c.file("pids.max"), math.MaxUint64)},
		CPU:  &v2stats.CPUStat{},
		Memory: &v2stats.MemoryStat{
			Usage:        smallfile.Uint(c.file("memory.current"), 0),
			UsageLimit:   smallfile.Uint(c.file("memory.max"), math.MaxUint64),
			MaxUsage:     smallfile.Uint(c.file("memory.peak"), 0),
			SwapUsage:    smallfile.Uint(c.file("memory.swap.current"), 0),
			SwapLimit:    smallfile.Uint(c.file("memory.swap.max"), math.MaxUint64),
			SwapMaxUsage: smallfile.Uint(c.file("memory.swap.peak"), 0),
		},
	}
	fillByName(m.CPU.ProtoReflect(), cpuStat, nil)
	if kv, err := smallfile.KV(c.file("memory.stat")); err == nil {
		fillByName(m.Memory.ProtoReflect(), kv, nil)
	}
	if kv, err := smallfile.KV(c.file("memory.events")); err == nil {
		m.MemoryEvents = &v2stats.MemoryEvents{}
		fillByName(m.MemoryEvents.ProtoReflect(), kv, nil)
	}
	m.Io = &v2stats.IOStat{Usage: readIOStat(c.file("io.stat"))}
	return bareAny(m)
}

// readIOStat parses io.stat: "major:minor rbytes=N wbytes=N rios=N wios=N ...".
func readIOStat(path string) []*v2stats.IOEntry {
	var buf [1024]byte
	data, err := smallfile.Read(path, buf[:0])
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

func (c *v2) Procs() ([]int, error) { return procsTree(c.dir) }

// inotifyMask wakes a v2 notifier when memory.events or cgroup.events
// changes, or goes (IN_IGNORED, always reported, follows).
const inotifyMask = unix.IN_MODIFY | unix.IN_DELETE_SELF

// openNotifier watches memory.events (and cgroup.events, which changes when
// the cgroup empties) with inotify; an OOM kill is the oom_kill counter
// going up.
func (c *v2) openNotifier() (notifier, error) {
	kills, err := readOOMKills(c.file("memory.events"))
	if err != nil {
		return nil, notFoundIfGone("oom notifier", err)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("oom notifier: inotify: %w", err)
	}
	for _, name := range []string{"memory.events", "cgroup.events"} {
		if _, err := unix.InotifyAddWatch(fd, c.file(name), inotifyMask); err != nil {
			unix.Close(fd)
			return nil, notFoundIfGone("oom notifier: watch "+c.file(name), err)
		}
	}
	// A kill between the first read and the watch is caught by the next
	// change's check: the counter only goes up.
	return &inotifyNotifier{ifd: fd, events: c.file("memory.events"), kills: kills}, nil
}

func (c *v2) adoptNotifier(st OOMWatchState) (notifier, error) {
	if err := takeInherited(st.FD, "anon_inode:inotify"); err != nil {
		return nil, err
	}
	// The inotify watches are the descriptor's, so they came with it; a
	// kill since the handover left an event queued on it, and st.OOMKills
	// makes it count as new.
	return &inotifyNotifier{ifd: st.FD, events: c.file("memory.events"), kills: st.OOMKills}, nil
}

// inotifyNotifier is a v2 cgroup's OOM notifier.
type inotifyNotifier struct {
	ifd    int
	events string // memory.events
	kills  uint64 // the oom_kill count already reported
}

func (n *inotifyNotifier) fd() int { return n.ifd }

func (n *inotifyNotifier) state() OOMWatchState {
	return OOMWatchState{FD: n.ifd, OOMKills: n.kills}
}

// check reads cgroup.events, then memory.events: a count read after the
// cgroup was seen empty is final, for the kernel counts a kill before the
// victim can leave the cgroup.
func (n *inotifyNotifier) check() checked {
	var buf [4096]byte
	for { // drain the queued events; the descriptor is non-blocking
		if k, err := unix.Read(n.ifd, buf[:]); k <= 0 || err != nil {
			break
		}
	}
	events, err := smallfile.KV(filepath.Join(filepath.Dir(n.events), "cgroup.events"))
	if isGone(err) {
		return checked{gone: true}
	}
	populated, known := events["populated"]
	empty := err == nil && known && populated == 0
	kills, err := readOOMKills(n.events)
	if isGone(err) {
		return checked{gone: true}
	}
	if err != nil { // not a count (a file half written): the next change rechecks
		return checked{}
	}
	c := checked{empty: empty}
	if kills > n.kills {
		c.kills, n.kills = kills-n.kills, kills
	}
	return c
}

// readOOMKills reads the oom_kill counter of a cgroup v2 memory.events file.
func readOOMKills(path string) (uint64, error) {
	kv, err := smallfile.KV(path)
	if err != nil {
		return 0, err
	}
	n, ok := kv["oom_kill"]
	if !ok {
		return 0, errors.New("no oom_kill in " + path)
	}
	return n, nil
}
