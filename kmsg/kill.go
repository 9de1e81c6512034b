package kmsg

import (
	"strconv"
	"strings"
)

// The OOM killer's records, as mm/oom_kill.c and mm/memcontrol.c write
// them (unchanged from Linux 5.0 to 6.18):
//
//	Memory cgroup out of memory: Killed process 1234 (sh) total-vm:35364kB, anon-rss:19712kB, ...
//	oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/a,task_memcg=/a/b,task=sh,pid=1234,uid=0
//	Tasks in /a/b are going to be killed due to memory.oom.group set
//
// The first is written for every process killed, with no rate limit (the
// reason before the colon says which OOM: a memory cgroup's, the whole
// system's...). The second, the summary of the kernel's OOM dump, is
// rate-limited with it. The third comes before the kills of a group.
const (
	killedProcess = ": Killed process "
	summaryPrefix = "oom-kill:"
	groupPrefix   = "Tasks in "
	groupSuffix   = " are going to be killed due to memory.oom.group set"
)

// parseKill reads an OOM kill from a record's text, if it reports one.
func parseKill(text string) (Kill, bool) {
	switch {
	case strings.HasPrefix(text, summaryPrefix):
		return parseSummary(text)
	case strings.HasPrefix(text, groupPrefix) && strings.HasSuffix(text, groupSuffix):
		path := strings.TrimSuffix(strings.TrimPrefix(text, groupPrefix), groupSuffix)
		return Kill{Cgroup: path, Group: true}, path != ""
	}
	_, rest, ok := strings.Cut(text, killedProcess)
	if !ok {
		return Kill{}, false
	}
	digits, rest, ok := strings.Cut(rest, " ")
	if !ok || !strings.HasPrefix(rest, "(") {
		return Kill{}, false
	}
	pid, ok := parsePid(digits)
	return Kill{Pid: pid}, ok
}

// parseSummary reads "oom-kill:...,task_memcg=PATH,task=COMM,pid=PID,uid=UID".
// COMM may hold commas, PATH too: the fields are found from the end, and
// PATH is what lies between the first task_memcg= and the last ,task=.
func parseSummary(text string) (Kill, bool) {
	at := strings.LastIndex(text, ",pid=")
	if at < 0 {
		return Kill{}, false
	}
	digits, _, _ := strings.Cut(text[at+len(",pid="):], ",")
	pid, ok := parsePid(digits)
	if !ok {
		return Kill{}, false
	}
	k := Kill{Pid: pid}
	task := strings.LastIndex(text[:at], ",task=")
	memcg := strings.Index(text, ",task_memcg=")
	if task >= 0 && memcg >= 0 && memcg+len(",task_memcg=") <= task {
		k.Cgroup = text[memcg+len(",task_memcg=") : task]
	}
	return k, true
}

func parsePid(s string) (int, bool) {
	pid, err := strconv.Atoi(s)
	return pid, err == nil && pid > 0
}
