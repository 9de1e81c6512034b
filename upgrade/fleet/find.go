// Package fleet is the upgrade command's side of a live upgrade: it finds
// the serving tether shims of this host and asks each to re-execute a new
// binary. It trusts only what the kernel says about a process (its
// executable, its root directory, the sockets it holds), never what a
// process says about itself, so that a process in a container cannot pass
// for a shim, stall the command or point it at another socket of the host.
// It reads procfs and asks the shims over their own sockets; it never
// signals or changes a process.
package fleet

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Shim is a serving tether shim of this host.
type Shim struct {
	Pid int
	// Namespace and Address are its -namespace and -address: the
	// containerd namespace it serves and that containerd's socket (a path
	// in the shim's root). A shim's command line is taken as said only
	// once its executable has shown it is tether.
	Namespace, Address string
	// Socket is the path its listening socket is bound to, in its root.
	Socket string
	// socketInode is that socket's inode (/proc/PID/fd's socket:[N]).
	socketInode uint64
}

// Find lists the serving tether shims of this host: processes that share
// this process's root directory (a container's processes do not) and run
// the same program as this process (read from their executables, so a copy
// of the binary, one replaced on disk, or the next version all count),
// whose command line is a serving shim's, holding a listening socket in a
// directory named "tether". It reads procfs only.
func Find() ([]Shim, error) {
	self, err := identify("self")
	if err != nil {
		return nil, fmt.Errorf("this program: %w", err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var found []Shim
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if s, ok := shimAt(pid, self); ok {
			found = append(found, s)
		}
	}
	return withoutForks(found), nil
}

// withoutForks drops the shims' children that have not exec'd yet: between
// fork and exec a child has the shim's executable, command line and
// descriptors, the listening socket among them. The shim is the holder of
// a socket whose parent does not hold it too.
func withoutForks(found []Shim) []Shim {
	holders := map[uint64]map[int]bool{}
	for _, s := range found {
		if holders[s.socketInode] == nil {
			holders[s.socketInode] = map[int]bool{}
		}
		holders[s.socketInode][s.Pid] = true
	}
	var shims []Shim
	for _, s := range found {
		if len(holders[s.socketInode]) == 1 || !holders[s.socketInode][parentOf(s.Pid)] {
			shims = append(shims, s)
		}
	}
	return shims
}

// parentOf is pid's parent (0 if unknown): /proc/PID/stat's fourth field,
// after the command name in parentheses (which may hold anything).
func parentOf(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0
	}
	var state string
	var ppid int
	fmt.Sscan(string(data[i+1:]), &state, &ppid)
	return ppid
}

// process is what makes a process a tether shim's peer: the program it
// runs and its root directory.
type process struct {
	program string
	root    fileID
}

// fileID is a file's identity: its device and inode.
type fileID struct{ dev, ino uint64 }

// statID is the identity of the file at path (symlinks followed).
func statID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{st.Dev, st.Ino}, nil
}

// identify reads the root and the program of process pid ("self" for this
// one).
func identify(pid string) (process, error) {
	root, err := statID("/proc/" + pid + "/root")
	if err != nil {
		return process{}, err
	}
	program, err := programAt(pid)
	return process{program: program, root: root}, err
}

// programAt is the program process pid runs, read from its executable.
func programAt(pid string) (string, error) {
	exe, err := os.Open("/proc/" + pid + "/exe")
	if err != nil {
		return "", err
	}
	defer exe.Close()
	return programOf(exe)
}

// shimAt says whether pid is a serving tether shim, and which. The root
// goes first: a container's process is told apart without opening
// anything of its own, and its command line is never read.
func shimAt(pid int, self process) (Shim, bool) {
	p := strconv.Itoa(pid)
	if root, err := statID("/proc/" + p + "/root"); err != nil || root != self.root {
		return Shim{}, false // another root (a container's process), or gone
	}
	if program, err := programAt(p); err != nil || program != self.program {
		return Shim{}, false
	}
	ns, address, ok := servingShim(pid)
	if !ok {
		return Shim{}, false
	}
	path, inode, ok := heldSocket(pid)
	if !ok {
		return Shim{}, false
	}
	return Shim{Pid: pid, Namespace: ns, Address: address, Socket: path, socketInode: inode}, true
}

// heldSocket is the listening socket pid holds in a directory named
// "tether" (where tether's start binds a shim's), by its bound path and
// inode. The path comes from the shim's own network namespace.
func heldSocket(pid int) (path string, inode uint64, ok bool) {
	listening, err := listeningSockets(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return "", 0, false
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		n, ok := strings.CutPrefix(target, "socket:[")
		if !ok {
			continue
		}
		inode, err := strconv.ParseUint(strings.TrimSuffix(n, "]"), 10, 64)
		if err != nil {
			continue
		}
		if path, ok := listening[inode]; ok && filepath.Base(filepath.Dir(path)) == "tether" {
			return path, inode, true
		}
	}
	return "", 0, false
}

// servingShim reports whether pid's command line is that of a serving
// shim (-namespace, -address and -publish-binary, and no action), and the
// namespace and containerd address it serves.
func servingShim(pid int) (namespace, address string, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "", "", false
	}
	return servingArgs(strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00"))
}

// servingArgs is servingShim on a command line.
func servingArgs(args []string) (namespace, address string, ok bool) {
	flags := map[string]string{}
	for i := 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return "", "", false // an action (start, delete, upgrade): not serving
		}
		name, value, inline := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !inline && !booleanFlags[name] && i+1 < len(args) {
			i++
			value = args[i]
		}
		flags[name] = value
	}
	address, hasAddress := flags["address"]
	_, publish := flags["publish-binary"]
	ns, named := flags["namespace"]
	if !named || !hasAddress || !publish {
		return "", "", false
	}
	return ns, address, true
}

// booleanFlags are the shim's flags that take no value.
var booleanFlags = map[string]bool{"debug": true, "v": true, "info": true}

// listeningSockets maps the inodes of listening unix sockets with a path
// to that path (/proc/net/unix: "Num RefCount Protocol Flags Type St Inode
// Path"; flag 00010000 is __SO_ACCEPTCON, a listening socket).
func listeningSockets(netUnix string) (map[uint64]string, error) {
	f, err := os.Open(netUnix)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[uint64]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[3] != "00010000" || !strings.HasPrefix(fields[7], "/") {
			continue
		}
		if inode, err := strconv.ParseUint(fields[6], 10, 64); err == nil {
			out[inode] = fields[7]
		}
	}
	return out, sc.Err()
}
