// Package kmsg reads the kernel's log for the OOM killer's reports: which
// process it killed and in which memory cgroup. That is its one job.
//
// The report is the one record of an OOM kill that cannot go missing. The
// kernel counts a kill in the victim's memory.events before it sends the
// SIGKILL, but tells a watcher of that file through a notification that is
// rate-limited per file and dropped if the cgroup is removed first (as
// systemd removes a container's scope the moment it empties). The report,
// "<why>: Killed process PID (COMM) ...", is written without a rate limit
// while the kernel holds the victim's task lock, which the victim must take
// on its way out: it is in the log before the victim can leave its cgroup
// or be reaped. A one-line summary naming the victim's cgroup
// ("oom-kill:...,task_memcg=PATH,task=COMM,pid=PID,...") comes before it,
// but is rate-limited with the rest of the kernel's OOM dump.
//
// It keeps nothing open: a Mark is a value, and Kills reads the log once,
// from its oldest record to its newest, and closes it. It reads only
// records of the kernel's own facility (userspace may write to the log, but
// never as the kernel). It never blocks: the log is read until it has no
// more records.
package kmsg

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Kill is an OOM kill as the kernel's log reports it.
type Kill struct {
	// Pid is the victim's pid in the kernel's initial pid namespace; 0 for
	// a Group record.
	Pid int
	// Cgroup is the victim's memory cgroup, from the root of its hierarchy
	// (as /proc/PID/cgroup shows it in the initial cgroup namespace); ""
	// when the record does not say.
	Cgroup string
	// Group is set when the record says every process of Cgroup is being
	// killed (memory.oom.group); each one gets a record of its own.
	Group bool
}

// Mark is a place in the kernel's log: Kills reads the records written
// after it. It is the timestamp of the log's last record when it was
// made, which is earlier than anything that happens after Mark returns.
type Mark struct {
	// Usec is the last record's timestamp (the kernel's local clock, in
	// µs since boot).
	Usec uint64 `json:"usec"`
	// Empty is set when the log had no record to read (it was cleared,
	// as by dmesg -C): every record in it is newer than the mark.
	Empty bool `json:"empty,omitempty"`
}

// Log is the kernel's log.
type Log struct {
	// pidsAsKernel and pathsAsKernel say whether this process sees pids
	// and cgroup paths as the log names them: from the initial pid and
	// cgroup namespaces. KillsOf compares only those.
	pidsAsKernel, pathsAsKernel bool
	// readAll reads the end of the log as text, as syslog(2)'s
	// SYSLOG_ACTION_READ_ALL does: as many of the newest records as fit.
	readAll func(buf []byte) (int, error)
	// records calls f on each record of the log, oldest first, as
	// /dev/kmsg gives them: from the oldest there is, or from the oldest
	// written since the log was last cleared.
	records func(sinceClear bool, f func([]byte)) error
}

// New returns the running kernel's log. Reading it needs CAP_SYSLOG in the
// initial user namespace.
func New() *Log {
	pidNS, _ := os.Readlink("/proc/self/ns/pid")
	cgroupNS, _ := os.Readlink("/proc/self/ns/cgroup")
	return &Log{
		// The initial namespaces' inode numbers are fixed
		// (PROC_PID_INIT_INO, PROC_CGROUP_INIT_INO).
		pidsAsKernel:  pidNS == "pid:[4026531836]",
		pathsAsKernel: cgroupNS == "cgroup:[4026531835]",
		readAll:       func(buf []byte) (int, error) { return unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf) },
		records:       func(sinceClear bool, f func([]byte)) error { return readDevice("/dev/kmsg", sinceClear, f) },
	}
}

// Mark marks where the log is now: one syslog(2) call for its newest
// records, read as text. Without timestamps in that text (printk.time=0)
// it reads the whole log instead.
func (l *Log) Mark() (Mark, error) {
	for _, size := range []int{4 << 10, 64 << 10} {
		buf := make([]byte, size)
		n, err := l.readAll(buf)
		if err != nil {
			return Mark{}, fmt.Errorf("read the kernel log's newest records: %w", err)
		}
		if n == 0 {
			continue // empty, or its newest record does not fit
		}
		usec, ok := lastTimestamp(buf[:n])
		if !ok {
			return l.markByReading()
		}
		return Mark{Usec: usec}, nil
	}
	return Mark{Empty: true}, nil
}

// markByReading marks the log by reading it to its newest record.
func (l *Log) markByReading() (Mark, error) {
	m := Mark{Empty: true}
	err := l.records(false, func(b []byte) {
		if r, ok := parseRecord(b); ok {
			m = Mark{Usec: r.usec}
		}
	})
	return m, err
}

// Kills returns the OOM kills the kernel reported after m, oldest first.
func (l *Log) Kills(m Mark) ([]Kill, error) {
	var kills []Kill
	err := l.each(m.Empty, func(r record) {
		if !m.Empty && r.usec <= m.Usec {
			return
		}
		if k, ok := parseKill(r.text); ok {
			kills = append(kills, k)
		}
	})
	return kills, err
}

// KillsOf counts the OOM kills the kernel reported after m of a container
// whose init is pid and whose memory cgroup is cgroup (CountKills), as far
// as this process sees pids and paths as the log names them.
func (l *Log) KillsOf(m Mark, pid int, cgroup string) (uint64, error) {
	kills, err := l.Kills(m)
	if err != nil {
		return 0, err
	}
	if !l.pidsAsKernel {
		pid = 0
	}
	if !l.pathsAsKernel {
		cgroup = ""
	}
	return CountKills(kills, pid, cgroup), nil
}

// CountKills counts the kills of a container among kills: victims that are
// its init (pid) or whose record names its cgroup, or kills of its whole
// cgroup as a group, whichever are more (a group kill reports each member
// as a victim too). pid 0 and cgroup "" match nothing. The count is never
// more than the kernel's own count of the cgroup's kills: a victim named
// twice counts once, one named only by a rate-limited record that was not
// written not at all.
func CountKills(kills []Kill, pid int, cgroup string) uint64 {
	victims := map[int]bool{}
	var groups uint64
	for _, k := range kills {
		switch {
		case k.Group:
			if cgroup != "" && k.Cgroup == cgroup {
				groups++
			}
		case pid > 0 && k.Pid == pid, cgroup != "" && k.Cgroup == cgroup:
			victims[k.Pid] = true
		}
	}
	return max(uint64(len(victims)), groups)
}

// each calls f on every record of the kernel's own facility, oldest first.
func (l *Log) each(sinceClear bool, f func(record)) error {
	return l.records(sinceClear, func(b []byte) {
		if r, ok := parseRecord(b); ok && r.facility == 0 {
			f(r)
		}
	})
}

// readDevice reads the log's records from dev (/dev/kmsg), one per read,
// until it has no newer one.
func readDevice(dev string, sinceClear bool, f func([]byte)) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("kernel log: %w", err)
	}
	defer unix.Close(fd)
	whence := unix.SEEK_SET
	if sinceClear {
		whence = unix.SEEK_DATA
	}
	if _, err := unix.Seek(fd, 0, whence); err != nil {
		return fmt.Errorf("kernel log: seek: %w", err)
	}
	// The kernel refuses a buffer shorter than its longest record (8 KiB
	// with its metadata).
	buf := make([]byte, 16<<10)
	for {
		n, err := unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil // no newer record
		case errors.Is(err, unix.EPIPE), errors.Is(err, unix.EINTR):
			// EPIPE: records were overwritten under the reader, which
			// goes on from the oldest one left.
			continue
		case err != nil:
			return fmt.Errorf("kernel log: read: %w", err)
		case n == 0:
			return nil
		}
		f(buf[:n])
	}
}

// record is one record of the log as /dev/kmsg gives it.
type record struct {
	facility int
	usec     uint64
	text     string // unescaped
}

// parseRecord parses "PRI,SEQ,USEC,FLAGS[,...];TEXT\n", which may be
// followed by " KEY=VALUE" lines (dropped). TEXT has every byte that is
// not printable ASCII, and backslash, escaped as \xNN.
func parseRecord(b []byte) (record, bool) {
	head, rest, ok := bytes.Cut(b, []byte(";"))
	if !ok {
		return record{}, false
	}
	fields := bytes.Split(head, []byte(","))
	if len(fields) < 3 {
		return record{}, false
	}
	pri, err1 := strconv.Atoi(string(fields[0]))
	usec, err2 := strconv.ParseUint(string(fields[2]), 10, 64)
	if err1 != nil || err2 != nil {
		return record{}, false
	}
	text, _, _ := bytes.Cut(rest, []byte("\n"))
	return record{facility: pri >> 3, usec: usec, text: unescape(text)}, true
}

// unescape undoes the log's \xNN escapes.
func unescape(b []byte) string {
	if !bytes.Contains(b, []byte(`\x`)) {
		return string(b)
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] == '\\' && i+3 < len(b) && b[i+1] == 'x' {
			if v, err := strconv.ParseUint(string(b[i+2:i+4]), 16, 8); err == nil {
				out = append(out, byte(v))
				i += 3
				continue
			}
		}
		out = append(out, b[i])
	}
	return string(out)
}

// lastTimestamp finds the timestamp of the last line of syslog(2)'s text:
// "<PRI>[SECONDS.MICROS]..." (each line of a record carries its record's).
func lastTimestamp(text []byte) (uint64, bool) {
	text = bytes.TrimRight(text, "\n")
	if i := bytes.LastIndexByte(text, '\n'); i >= 0 {
		text = text[i+1:]
	}
	_, rest, ok := bytes.Cut(text, []byte(">"))
	if !ok || len(rest) == 0 || rest[0] != '[' {
		return 0, false
	}
	stamp, _, ok := bytes.Cut(rest[1:], []byte("]"))
	if !ok {
		return 0, false
	}
	sec, micros, ok := bytes.Cut(bytes.TrimSpace(stamp), []byte("."))
	if !ok || len(micros) != 6 {
		return 0, false
	}
	s, err1 := strconv.ParseUint(string(sec), 10, 64)
	u, err2 := strconv.ParseUint(string(micros), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return s*1e6 + u, true
}
