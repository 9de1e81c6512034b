package upgrade

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Found is a serving tether shim on this host.
type Found struct {
	Pid       int
	Namespace string // the containerd namespace it serves (its -namespace)
	// Socket is its listening socket, as a path this process can dial: the
	// shim's own path, or the same seen through /proc/PID/root when the
	// shim runs in another mount namespace.
	Socket string
}

// FindShims lists the serving tether shims of this host: processes whose
// command line is a serving shim's (the flags containerd starts it with,
// no action) listening on a socket in a directory named "tether". It reads
// procfs only; it asks the shims nothing.
func FindShims() ([]Found, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var found []Found
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ns, ok := servingShim(pid)
		if !ok {
			continue
		}
		// The shim's own network namespace's sockets: it may not be ours.
		listening, err := listeningSockets(fmt.Sprintf("/proc/%d/net/unix", pid))
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if err != nil {
				continue
			}
			inode, ok := strings.CutPrefix(target, "socket:[")
			if !ok {
				continue
			}
			if path, ok := listening[strings.TrimSuffix(inode, "]")]; ok && filepath.Base(filepath.Dir(path)) == "tether" {
				if _, err := os.Stat(path); err != nil {
					path = fmt.Sprintf("/proc/%d/root%s", pid, path)
				}
				found = append(found, Found{Pid: pid, Namespace: ns, Socket: path})
				break
			}
		}
	}
	return found, nil
}

// servingShim reports whether pid's command line is that of a serving
// shim (-namespace, -address and -publish-binary, and no action), and the
// namespace it serves.
func servingShim(pid int) (namespace string, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "", false
	}
	return servingArgs(strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00"))
}

// servingArgs is servingShim on a command line.
func servingArgs(args []string) (namespace string, ok bool) {
	flags := map[string]string{}
	for i := 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return "", false // an action (start, delete, upgrade): not serving
		}
		name, value, inline := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !inline && !booleanFlags[name] && i+1 < len(args) {
			i++
			value = args[i]
		}
		flags[name] = value
	}
	_, address := flags["address"]
	_, publish := flags["publish-binary"]
	ns, named := flags["namespace"]
	return ns, named && address && publish
}

// booleanFlags are the shim's flags that take no value.
var booleanFlags = map[string]bool{"debug": true, "v": true, "info": true}

// listeningSockets maps the inodes of listening unix sockets with a path
// to that path (/proc/net/unix: "Num RefCount Protocol Flags Type St Inode
// Path"; flag 00010000 is __SO_ACCEPTCON, a listening socket).
func listeningSockets(netUnix string) (map[string]string, error) {
	f, err := os.Open(netUnix)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[3] != "00010000" || !strings.HasPrefix(fields[7], "/") {
			continue
		}
		out[fields[6]] = fields[7]
	}
	return out, sc.Err()
}
