// Package procmem reads what processes cost in memory: RSS, PSS and
// anonymous memory from /proc/PID/smaps_rollup, summed or as medians, and
// which processes descend from which. It is the bench's measuring tape.
package procmem

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/tether-shim/tether/integration/harness"
)

// Usage is one process's memory (or a sum of several), in KiB.
//   - RSS counts every page mapped, the binary's shared page cache included
//     (whole large folios of it on current kernels).
//   - PSS divides each page by the number of processes mapping it: the
//     processes' fair share of the machine's memory.
//   - Anon is the process's own memory (heap, stacks, written data): what
//     each more process adds.
type Usage struct {
	Pid     int `json:"pid,omitempty"`
	RSSKiB  int `json:"rss_kib"`
	PSSKiB  int `json:"pss_kib"`
	AnonKiB int `json:"anon_kib"`
}

// Of reads pid's memory; false if the process is gone.
func Of(pid int) (Usage, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return Usage{}, false
	}
	u := Usage{Pid: pid}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "Rss:":
			u.RSSKiB = v
		case "Pss:":
			u.PSSKiB = v
		case "Anonymous:":
			u.AnonKiB = v
		}
	}
	return u, true
}

// All reads the memory of each pid still alive.
func All(pids []int) []Usage {
	var us []Usage
	for _, pid := range pids {
		if u, ok := Of(pid); ok {
			us = append(us, u)
		}
	}
	return us
}

// Plus is the sum of u and v, of no one process.
func (u Usage) Plus(v Usage) Usage {
	return Usage{RSSKiB: u.RSSKiB + v.RSSKiB, PSSKiB: u.PSSKiB + v.PSSKiB, AnonKiB: u.AnonKiB + v.AnonKiB}
}

// Total is the sum of us.
func Total(us []Usage) Usage {
	var t Usage
	for _, u := range us {
		t = t.Plus(u)
	}
	return t
}

// Field is one of a Usage's figures.
type Field int

const (
	RSS Field = iota
	PSS
	Anon
)

func (f Field) String() string { return [...]string{"RSS", "PSS", "anon"}[f] }

// Of is the figure f of u, in KiB.
func (f Field) Of(u Usage) int { return [...]int{u.RSSKiB, u.PSSKiB, u.AnonKiB}[f] }

// Median is the median figure f of us, in KiB (0 for none).
func Median(us []Usage, f Field) float64 {
	if len(us) == 0 {
		return 0
	}
	xs := make([]int, len(us))
	for i, u := range us {
		xs[i] = f.Of(u)
	}
	slices.Sort(xs)
	if n := len(xs); n%2 == 0 {
		return float64(xs[n/2-1]+xs[n/2]) / 2
	}
	return float64(xs[len(xs)/2])
}

// Parent is pid's parent, or -1 once it is gone.
func Parent(pid int) int {
	st, ok := harness.ReadStat(pid)
	if !ok {
		return -1
	}
	return st.PPid
}

// Tree is the machine's processes by parent, read once.
type Tree map[int][]int

// ReadTree reads which processes are whose children.
func ReadTree() Tree {
	t := Tree{}
	for _, p := range harness.Pids() {
		if pp := Parent(p); pp > 0 {
			t[pp] = append(t[pp], p)
		}
	}
	return t
}

// Descendants lists the processes below pid: its children, theirs, and
// so on.
func (t Tree) Descendants(pid int) []int {
	var out []int
	queue := slices.Clone(t[pid])
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		out = append(out, p)
		queue = append(queue, t[p]...)
	}
	return out
}
