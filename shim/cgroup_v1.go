package shim

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

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
