package integration

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"

	"github.com/tether-shim/tether/integration/harness"
)

// process is one entry of /proc.
type process struct {
	pid, ppid int
	state     byte
	comm      string
	cmdline   []string
}

// processes lists the machine's processes.
func processes() []process {
	var out []process
	for _, pid := range harness.Pids() {
		st, ok := harness.ReadStat(pid)
		if !ok {
			continue
		}
		out = append(out, process{pid: pid, ppid: st.PPid, state: st.State, comm: st.Comm, cmdline: harness.Cmdline(pid)})
	}
	return out
}

// zombies lists processes in state Z.
func zombies() map[int]process {
	z := map[int]process{}
	for _, p := range processes() {
		if p.state == 'Z' {
			z[p.pid] = p
		}
	}
	return z
}

// shimsFor lists tether shim processes started for container id.
func shimsFor(id string) []process {
	var out []process
	for _, p := range processes() {
		if len(p.cmdline) == 0 || filepath.Base(p.cmdline[0]) != "containerd-shim-tether-v2" {
			continue
		}
		for i, a := range p.cmdline {
			if a == "-id" && i+1 < len(p.cmdline) && p.cmdline[i+1] == id {
				out = append(out, p)
			}
		}
	}
	return out
}

// mountsMatching lists mountinfo lines of this mount namespace containing s.
func mountsMatching(s string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			out = append(out, sc.Text())
		}
	}
	return out
}
