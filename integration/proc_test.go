package integration

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	entries, _ := os.ReadDir("/proc")
	var out []process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(stat)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < 0 || closing+4 > len(s) {
			continue
		}
		fields := strings.Fields(s[closing+2:])
		if len(fields) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		out = append(out, process{
			pid: pid, ppid: ppid, state: fields[0][0], comm: s[open+1 : closing],
			cmdline: strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00"),
		})
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
