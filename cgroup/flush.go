package cgroup

import (
	"os"

	"github.com/tether-shim/tether/kmsg"
)

// Flush reports, before it returns, every OOM kill in the cgroup that was
// not reported yet. The caller is about to publish the exit of the
// container's init, which must come after its OOM: containerd's CRI calls
// an exit OOMKilled only if the OOM came first.
//
// It reads the count once more. When the cgroup is already gone, and the
// last count was not read from an empty cgroup, the kills the notifier
// missed are in the kernel's log: the kills reported there since the watch
// began, of the container's init or naming its cgroup, beyond those
// already reported, are reported once. It reads the cgroup once and at
// worst the kernel's log once, and never waits for anything else.
func (h *OOMWatch) Flush() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n != nil {
		h.check()
	}
	if !h.gone || h.settled {
		return
	}
	h.settled = true // nothing more to learn: the cgroup is gone
	if !h.marked {
		return // warned when the watch began
	}
	kills, err := h.w.klog.Kills(h.mark)
	if err != nil {
		h.w.log.Warn("oom watch: read the kernel's log for the kills of a removed cgroup", "cgroup", h.cg, "error", err)
		return
	}
	if n := h.w.killsOf(h.pid, h.memcg, kills); n > h.reported {
		h.w.log.Debug("oom kill found in the kernel's log: the cgroup went before its count was read", "cgroup", h.cg, "kills", n, "reported", h.reported)
		h.reported = n
		h.onOOM()
	}
}

// killsOf counts the kills of a container, whose init is pid and whose
// cgroup is memcg, among kills: victims that are its init or whose record
// names its cgroup, or kills of its whole cgroup as a group, whichever are
// more (a group kill reports each member as a victim too). The count is
// never more than the kernel's own count of the cgroup's kills: a victim
// the kernel named twice counts once, and one named by a rate-limited
// record that was not written is not counted.
func (w *OOMWatcher) killsOf(pid int, memcg string, kills []kmsg.Kill) uint64 {
	pidMatches := w.pidsAsKernel && pid > 0
	pathMatches := w.pathsAsKernel && memcg != ""
	victims := map[int]bool{}
	var groups uint64
	for _, k := range kills {
		switch {
		case k.Group:
			if pathMatches && k.Cgroup == memcg {
				groups++
			}
		case pidMatches && k.Pid == pid, pathMatches && k.Cgroup == memcg:
			victims[k.Pid] = true
		}
	}
	return max(uint64(len(victims)), groups)
}

// initialNamespaces says whether this process is in the kernel's initial
// pid namespace and initial cgroup namespace, where pids and cgroup paths
// read as the kernel's log writes them. Their inode numbers are fixed
// (PROC_PID_INIT_INO, PROC_CGROUP_INIT_INO).
func initialNamespaces() (pid, cgroup bool) {
	pidNS, _ := os.Readlink("/proc/self/ns/pid")
	cgroupNS, _ := os.Readlink("/proc/self/ns/cgroup")
	return pidNS == "pid:[4026531836]", cgroupNS == "cgroup:[4026531835]"
}
