package harness

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Stat is what the tests and the bench read of /proc/PID/stat.
type Stat struct {
	Pid, PPid    int
	State        byte
	Comm         string
	UTime, STime uint64 // clock ticks
}

// ReadStat parses /proc/PID/stat; comm may hold spaces and parentheses.
func ReadStat(pid int) (Stat, bool) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return Stat{}, false
	}
	s := string(data)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < 0 || closing+4 > len(s) {
		return Stat{}, false
	}
	// state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
	f := strings.Fields(s[closing+2:])
	if len(f) < 13 {
		return Stat{}, false
	}
	st := Stat{Pid: pid, State: f[0][0], Comm: s[open+1 : closing]}
	st.PPid, _ = strconv.Atoi(f[1])
	st.UTime, _ = strconv.ParseUint(f[11], 10, 64)
	st.STime, _ = strconv.ParseUint(f[12], 10, 64)
	return st, true
}

// Cmdline is the argument list of pid (empty for a zombie).
func Cmdline(pid int) []string {
	data, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// Pids lists the machine's processes.
func Pids() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
