package shim

// The shim reads cgroups itself rather than through containerd/cgroups'
// managers: it only needs statistics, OOM notices and one write to
// cgroup.procs, and linking the managers (with their eBPF, D-Bus and
// systemd dependencies) cost every shim about 1.9 MiB of resident memory
// (measured with make bench). The statistics are still containerd's
// cgroups/v3 stats messages, so containerd decodes them as before.

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// cgroupRoot is where the cgroup hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

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

// unified reports whether the host runs cgroup v2 only. A hybrid host
// (v1 controllers, v2 mounted aside) runs containers in v1.
func unified() bool {
	var st unix.Statfs_t
	return unix.Statfs(cgroupRoot, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// hostCgroups knows where the host's cgroup v1 hierarchies are mounted,
// read once per shim: they do not move, and mountinfo is long on a busy host.
type hostCgroups struct {
	mounts func() (map[string]string, error)
}

func newHostCgroups() *hostCgroups {
	return &hostCgroups{mounts: sync.OnceValues(func() (map[string]string, error) {
		return v1Mounts("/proc/self/mountinfo")
	})}
}

// load finds the cgroup of the container whose init is pid.
func (h *hostCgroups) load(pid int) (cgroup, error) {
	paths, err := procCgroups(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	if unified() {
		path, ok := paths[""]
		if !ok {
			return nil, fmt.Errorf("pid %d has no cgroup v2 path", pid)
		}
		return loadCgroupV2(cgroupRoot, path)
	}
	mounts, err := h.mounts()
	if err != nil {
		return nil, err
	}
	dirs := map[string]string{}
	for controller, mnt := range mounts {
		if p, ok := paths[controller]; ok {
			dirs[controller] = filepath.Join(mnt, p)
		}
	}
	if dirs["memory"] == "" {
		return nil, fmt.Errorf("pid %d has no memory cgroup", pid)
	}
	return cgroupV1{dirs: dirs}, nil
}

// procCgroups parses /proc/PID/cgroup into controller -> path ("" for v2).
func procCgroups(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	paths := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			paths[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			paths[strings.TrimPrefix(c, "name=")] = parts[2]
		}
	}
	return paths, nil
}

// v1Mounts maps each cgroup v1 controller to the mount point of its hierarchy.
func v1Mounts(mountinfo string) (map[string]string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mounts := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 3 || tail[0] != "cgroup" {
			continue
		}
		for _, opt := range strings.Split(tail[2], ",") {
			mounts[strings.TrimPrefix(opt, "name=")] = fields[4]
		}
	}
	return mounts, sc.Err()
}

// loadCgroupV2 loads the cgroup v2 group (a path below mountpoint).
func loadCgroupV2(mountpoint, group string) (cgroup, error) {
	dir := filepath.Join(mountpoint, filepath.Clean("/"+group))
	if _, err := os.Stat(filepath.Join(dir, "cgroup.controllers")); err != nil {
		return nil, fmt.Errorf("load cgroup %s: %w", group, err)
	}
	return cgroupV2{dir: dir}, nil
}

// readKV reads a file of "key value" lines.
func readKV(path string) (map[string]uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kv := map[string]uint64{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			kv[k] = n
		}
	}
	return kv, nil
}

// readUint reads a one-number file; "max" reads as max (the caller's
// value for no limit), a missing or odd file as 0.
func readUint(path string, max uint64) uint64 {
	data, err := os.ReadFile(path)
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

// fillByName sets the uint64 fields of m named like the keys of kv (or
// like alias[key]).
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

// cgroupV1 is a container's cgroup on a v1 host: one directory per controller.
type cgroupV1 struct {
	dirs map[string]string
}

// v1MemoryAlias maps memory.stat keys to the names the metrics use.
var v1MemoryAlias = map[string]string{
	"pgpgin": "pg_pg_in", "pgpgout": "pg_pg_out", "pgfault": "pg_fault", "pgmajfault": "pg_maj_fault",
	"total_pgpgin": "total_pg_pg_in", "total_pgpgout": "total_pg_pg_out",
	"total_pgfault": "total_pg_fault", "total_pgmajfault": "total_pg_maj_fault",
	"hierarchical_memsw_limit": "hierarchical_swap_limit",
}

// v1BlkioFiles are the blkio statistics, in the order of BlkIOStat's fields.
var v1BlkioFiles = []string{
	"io_service_bytes_recursive", "io_serviced_recursive", "io_queued_recursive", "io_service_time_recursive",
	"io_wait_time_recursive", "io_merged_recursive", "io_time_recursive", "sectors_recursive",
}

func (c cgroupV1) file(controller, name string) string {
	return filepath.Join(c.dirs[controller], name)
}

func (c cgroupV1) metrics() (*anypb.Any, error) {
	if _, err := os.Stat(c.dirs["memory"]); err != nil {
		return nil, fmt.Errorf("cgroup stats: %w", err)
	}
	m := &v1stats.Metrics{}
	if c.dirs["pids"] != "" {
		m.Pids = &v1stats.PidsStat{Current: readUint(c.file("pids", "pids.current"), 0), Limit: readUint(c.file("pids", "pids.max"), 0)}
	}
	if c.dirs["cpuacct"] != "" {
		usage := &v1stats.CPUUsage{Total: readUint(c.file("cpuacct", "cpuacct.usage"), 0)}
		if kv, err := readKV(c.file("cpuacct", "cpuacct.stat")); err == nil {
			const nsPerTick = 1e9 / 100 // cpuacct.stat counts USER_HZ ticks
			usage.User, usage.Kernel = kv["user"]*nsPerTick, kv["system"]*nsPerTick
		}
		if data, err := os.ReadFile(c.file("cpuacct", "cpuacct.usage_percpu")); err == nil {
			for _, f := range strings.Fields(string(data)) {
				n, _ := strconv.ParseUint(f, 10, 64)
				usage.PerCPU = append(usage.PerCPU, n)
			}
		}
		m.CPU = &v1stats.CPUStat{Usage: usage, Throttling: &v1stats.Throttle{}}
		if kv, err := readKV(c.file("cpu", "cpu.stat")); err == nil {
			m.CPU.Throttling = &v1stats.Throttle{Periods: kv["nr_periods"], ThrottledPeriods: kv["nr_throttled"], ThrottledTime: kv["throttled_time"]}
		}
	}
	mem := &v1stats.MemoryStat{}
	if kv, err := readKV(c.file("memory", "memory.stat")); err == nil {
		fillByName(mem.ProtoReflect(), kv, v1MemoryAlias)
	}
	entry := func(prefix string) *v1stats.MemoryEntry {
		return &v1stats.MemoryEntry{
			Usage:   readUint(c.file("memory", prefix+"usage_in_bytes"), 0),
			Limit:   readUint(c.file("memory", prefix+"limit_in_bytes"), 0),
			Max:     readUint(c.file("memory", prefix+"max_usage_in_bytes"), 0),
			Failcnt: readUint(c.file("memory", prefix+"failcnt"), 0),
		}
	}
	mem.Usage, mem.Swap, mem.Kernel, mem.KernelTCP = entry("memory."), entry("memory.memsw."), entry("memory.kmem."), entry("memory.kmem.tcp.")
	m.Memory = mem
	if kv, err := readKV(c.file("memory", "memory.oom_control")); err == nil {
		m.MemoryOomControl = &v1stats.MemoryOomControl{OomKillDisable: kv["oom_kill_disable"], UnderOom: kv["under_oom"], OomKill: kv["oom_kill"]}
	}
	if c.dirs["blkio"] != "" {
		m.Blkio = c.blkio()
	}
	return bareAny(m)
}

// blkio reads the blkio statistics ("major:minor Op value" lines), from the
// throttling files when the recursive ones are empty (no CFQ scheduler).
func (c cgroupV1) blkio() *v1stats.BlkIOStat {
	stat := &v1stats.BlkIOStat{}
	r := stat.ProtoReflect()
	fields := r.Descriptor().Fields()
	empty := true
	read := func(prefix string) {
		for i, name := range v1BlkioFiles {
			entries := parseBlkio(c.file("blkio", prefix+name))
			if len(entries) == 0 {
				continue
			}
			empty = false
			list := r.Mutable(fields.ByNumber(protoreflect.FieldNumber(i + 1))).List()
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
	data, err := os.ReadFile(path)
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
		value := f[len(f)-1]
		if len(f) == 3 {
			e.Op = f[1]
		}
		e.Value, _ = strconv.ParseUint(value, 10, 64)
		out = append(out, e)
	}
	return out
}

// oomNotifier registers an eventfd for memory.oom_control, the v1 way.
func (c cgroupV1) oomNotifier() (int, func() (bool, bool), error) {
	control, err := os.Open(c.file("memory", "memory.oom_control"))
	if err != nil {
		return -1, nil, fmt.Errorf("oom control: %w", err)
	}
	defer control.Close()
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return -1, nil, fmt.Errorf("oom eventfd: %w", err)
	}
	reg := fmt.Sprintf("%d %d", efd, control.Fd())
	if err := os.WriteFile(c.file("memory", "cgroup.event_control"), []byte(reg), 0); err != nil {
		unix.Close(efd)
		return -1, nil, fmt.Errorf("register oom event: %w", err)
	}
	check := func() (oom, gone bool) {
		var buf [8]byte
		unix.Read(efd, buf[:])
		// The eventfd also fires when the cgroup is removed.
		if _, err := os.Stat(c.file("memory", "memory.oom_control")); err != nil {
			return false, true
		}
		return true, false
	}
	return efd, check, nil
}

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

// JoinCgroup moves pid into the cgroup at path (the ShimCgroup option): the
// v2 group, or the group of that path in every v1 hierarchy that has it.
func JoinCgroup(path string, pid int) error {
	procs := []byte(strconv.Itoa(pid))
	if unified() {
		if err := os.WriteFile(filepath.Join(cgroupRoot, path, "cgroup.procs"), procs, 0); err != nil {
			return fmt.Errorf("join shim cgroup %s: %w", path, err)
		}
		return nil
	}
	mounts, err := v1Mounts("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	joined := map[string]bool{}
	for _, mnt := range mounts {
		dir := filepath.Join(mnt, path)
		if joined[dir] {
			continue
		}
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), procs, 0); err != nil {
			return fmt.Errorf("join shim cgroup %s: %w", dir, err)
		}
		joined[dir] = true
	}
	if len(joined) == 0 {
		return fmt.Errorf("shim cgroup %s exists in no cgroup hierarchy", path)
	}
	return nil
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
