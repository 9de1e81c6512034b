package cgroup

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/smallfile"
)

// v1 is a container's cgroup on a v1 host: one directory per controller.
type v1 struct {
	dirs map[string]string
	// memcg is the memory cgroup's path from the root of its hierarchy,
	// as the kernel's log names it; "" if unknown.
	memcg string
}

func (c *v1) memcgPath() string { return c.memcg }

// v1MemoryAlias maps memory.stat keys to the names the metrics use.
var v1MemoryAlias = map[string]string{
	"pgpgin": "pg_pg_in", "pgpgout": "pg_pg_out", "pgfault": "pg_fault", "pgmajfault": "pg_maj_fault",
	"total_pgpgin": "total_pg_pg_in", "total_pgpgout": "total_pg_pg_out",
	"total_pgfault": "total_pg_fault", "total_pgmajfault": "total_pg_maj_fault",
	"hierarchical_memsw_limit": "hierarchical_swap_limit",
}

// v1BlkioFiles are the blkio statistics files, named (after "blkio.") as
// BlkIOStat's fields.
var v1BlkioFiles = []string{
	"io_service_bytes_recursive", "io_serviced_recursive", "io_queued_recursive", "io_service_time_recursive",
	"io_wait_time_recursive", "io_merged_recursive", "io_time_recursive", "sectors_recursive",
}

// v1ProcsControllers are the hierarchies Procs reads, first present wins:
// runc ps reads the devices hierarchy, which every runc container has.
var v1ProcsControllers = []string{"devices", "pids", "memory", "freezer"}

// file is a controller's file of the cgroup; "" (which reads as missing)
// when the cgroup is in no hierarchy of that controller.
func (c *v1) file(controller, name string) string {
	if c.dirs[controller] == "" {
		return ""
	}
	return filepath.Join(c.dirs[controller], name)
}

func (c *v1) Path() Path { return Path{V1: c.dirs}.clone() }

func (c *v1) Metrics() (*anypb.Any, error) {
	// The memory controller is always there (LoadPath checks), so its
	// memory.stat missing means the cgroup is gone.
	memStat, err := smallfile.KV(c.file("memory", "memory.stat"))
	if err != nil {
		return nil, notFoundIfGone("cgroup stats of "+c.dirs["memory"], err)
	}
	m := &v1stats.Metrics{}
	if c.dirs["pids"] != "" {
		m.Pids = &v1stats.PidsStat{Current: smallfile.Uint(c.file("pids", "pids.current"), 0), Limit: smallfile.Uint(c.file("pids", "pids.max"), 0)}
	}
	if c.dirs["cpuacct"] != "" {
		m.CPU = c.cpu()
	}
	mem := &v1stats.MemoryStat{}
	fillByName(mem.ProtoReflect(), memStat, v1MemoryAlias)
	entry := func(prefix string) *v1stats.MemoryEntry {
		return &v1stats.MemoryEntry{
			Usage:   smallfile.Uint(c.file("memory", prefix+"usage_in_bytes"), 0),
			Limit:   smallfile.Uint(c.file("memory", prefix+"limit_in_bytes"), 0),
			Max:     smallfile.Uint(c.file("memory", prefix+"max_usage_in_bytes"), 0),
			Failcnt: smallfile.Uint(c.file("memory", prefix+"failcnt"), 0),
		}
	}
	mem.Usage, mem.Swap, mem.Kernel, mem.KernelTCP = entry("memory."), entry("memory.memsw."), entry("memory.kmem."), entry("memory.kmem.tcp.")
	m.Memory = mem
	if kv, err := smallfile.KV(c.file("memory", "memory.oom_control")); err == nil {
		m.MemoryOomControl = &v1stats.MemoryOomControl{OomKillDisable: kv["oom_kill_disable"], UnderOom: kv["under_oom"], OomKill: kv["oom_kill"]}
	}
	if c.dirs["blkio"] != "" {
		m.Blkio = c.blkio()
	}
	return bareAny(m)
}

func (c *v1) cpu() *v1stats.CPUStat {
	usage := &v1stats.CPUUsage{Total: smallfile.Uint(c.file("cpuacct", "cpuacct.usage"), 0)}
	if kv, err := smallfile.KV(c.file("cpuacct", "cpuacct.stat")); err == nil {
		const nsPerTick = 1e9 / 100 // cpuacct.stat counts USER_HZ ticks
		usage.User, usage.Kernel = kv["user"]*nsPerTick, kv["system"]*nsPerTick
	}
	var buf [512]byte
	if data, err := smallfile.Read(c.file("cpuacct", "cpuacct.usage_percpu"), buf[:0]); err == nil {
		for _, f := range strings.Fields(string(data)) {
			n, _ := strconv.ParseUint(f, 10, 64)
			usage.PerCPU = append(usage.PerCPU, n)
		}
	}
	cpu := &v1stats.CPUStat{Usage: usage, Throttling: &v1stats.Throttle{}}
	if kv, err := smallfile.KV(c.file("cpu", "cpu.stat")); err == nil {
		cpu.Throttling = &v1stats.Throttle{Periods: kv["nr_periods"], ThrottledPeriods: kv["nr_throttled"], ThrottledTime: kv["throttled_time"]}
	}
	return cpu
}

// blkio reads the blkio statistics ("major:minor Op value" lines), from the
// throttling files when the recursive ones are empty (no CFQ/BFQ scheduler).
func (c *v1) blkio() *v1stats.BlkIOStat {
	stat := &v1stats.BlkIOStat{}
	r := stat.ProtoReflect()
	fields := r.Descriptor().Fields()
	empty := true
	read := func(prefix string) {
		for _, name := range v1BlkioFiles {
			entries := parseBlkio(c.file("blkio", prefix+name))
			if len(entries) == 0 {
				continue
			}
			empty = false
			list := r.Mutable(fields.ByName(protoreflect.Name(name))).List()
			for _, e := range entries {
				list.Append(protoreflect.ValueOfMessage(e.ProtoReflect()))
			}
		}
	}
	read("blkio.")
	if empty {
		read("blkio.throttle.")
	}
	return stat
}

func parseBlkio(path string) []*v1stats.BlkIOEntry {
	var buf [1024]byte
	data, err := smallfile.Read(path, buf[:0])
	if err != nil {
		return nil
	}
	var out []*v1stats.BlkIOEntry
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] == "Total" {
			continue
		}
		major, minor, ok := strings.Cut(f[0], ":")
		if !ok {
			continue
		}
		e := &v1stats.BlkIOEntry{}
		e.Major, _ = strconv.ParseUint(major, 10, 64)
		e.Minor, _ = strconv.ParseUint(minor, 10, 64)
		if len(f) == 3 {
			e.Op = f[1]
		}
		e.Value, _ = strconv.ParseUint(f[len(f)-1], 10, 64)
		out = append(out, e)
	}
	return out
}

func (c *v1) Procs() ([]int, error) {
	for _, controller := range v1ProcsControllers {
		if dir := c.dirs[controller]; dir != "" {
			return procsTree(dir)
		}
	}
	return nil, fmt.Errorf("cgroup %s is in none of the %v hierarchies", c.Path(), v1ProcsControllers)
}

// openNotifier registers an eventfd for memory.oom_control, the v1 way. The
// kernel signals it on each OOM of the cgroup and once when the cgroup is
// removed.
func (c *v1) openNotifier() (notifier, error) {
	control, err := os.Open(c.file("memory", "memory.oom_control"))
	if err != nil {
		return nil, notFoundIfGone("oom notifier", err)
	}
	defer control.Close()
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("oom notifier: eventfd: %w", err)
	}
	reg := fmt.Sprintf("%d %d", efd, control.Fd())
	if err := os.WriteFile(c.file("memory", "cgroup.event_control"), []byte(reg), 0); err != nil {
		unix.Close(efd)
		return nil, notFoundIfGone("oom notifier: register eventfd", err)
	}
	return &eventfdNotifier{efd: efd, control: c.file("memory", "memory.oom_control")}, nil
}

func (c *v1) adoptNotifier(st OOMWatchState) (notifier, error) {
	if err := takeInherited(st.FD, "anon_inode:[eventfd]"); err != nil {
		return nil, err
	}
	return &eventfdNotifier{efd: st.FD, control: c.file("memory", "memory.oom_control")}, nil
}

// eventfdNotifier is a v1 cgroup's OOM eventfd.
type eventfdNotifier struct {
	efd     int
	control string // memory.oom_control, gone with the cgroup
}

func (n *eventfdNotifier) fd() int              { return n.efd }
func (n *eventfdNotifier) state() OOMWatchState { return OOMWatchState{FD: n.efd} }

// check reads the eventfd's count: the kernel adds one for each OOM of the
// cgroup, before it kills, and one when the cgroup is removed. A count of
// two or more from a removed cgroup holds an OOM; a count of one from it
// may be either, which Flush settles with the kernel's log.
func (n *eventfdNotifier) check() checked {
	var buf [8]byte
	var count uint64
	if k, err := unix.Read(n.efd, buf[:]); err == nil && k == len(buf) {
		count = binary.NativeEndian.Uint64(buf[:])
	} // else EAGAIN: nothing happened
	_, err := os.Stat(n.control)
	gone := err != nil
	if count >= 2 || (count == 1 && !gone) {
		return checked{kills: 1, gone: gone}
	}
	return checked{gone: gone}
}
