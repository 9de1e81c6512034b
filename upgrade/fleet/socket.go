package fleet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// errNotTheShim says a shim's socket path leads to another file than the
// one its listening socket is bound to.
var errNotTheShim = errors.New("the socket's path names another socket than the one the shim holds")

// dial connects to the listening socket s holds, and to no other: its path
// is resolved inside the shim's root (no symlink there leads out of it),
// and the file found must be the one the kernel says that socket is bound
// to. The connection is made through the file found, so nothing can be
// swapped in between.
func (s Shim) dial(timeout time.Duration) (net.Conn, error) {
	sock, err := openInRoot(s.Pid, s.Socket)
	if err != nil {
		return nil, fmt.Errorf("open the shim's socket %s in its root: %w", s.Socket, err)
	}
	defer unix.Close(sock)
	found, err := fstatID(sock)
	if err != nil {
		return nil, err
	}
	bound, err := boundFile(s.Pid, s.socketInode)
	if err != nil {
		return nil, fmt.Errorf("the shim's socket: %w", err)
	}
	// sock_diag reports 32 bits of the inode number.
	if bound.dev != found.dev || bound.ino != found.ino&0xffffffff {
		return nil, fmt.Errorf("%s: %w", s.Socket, errNotTheShim)
	}
	d := net.Dialer{Timeout: timeout}
	return d.Dial("unix", fmt.Sprintf("/proc/self/fd/%d", sock))
}

// servesAddress says whether s serves the containerd at address: the same
// path, or a path to the same socket (the shim's resolved in its root).
func (s Shim) servesAddress(address string) bool {
	want, have := strings.TrimPrefix(address, "unix://"), strings.TrimPrefix(s.Address, "unix://")
	if filepath.Clean(want) == filepath.Clean(have) {
		return true
	}
	wantID, err := statID(want)
	if err != nil {
		return false
	}
	fd, err := openInRoot(s.Pid, have)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	haveID, err := fstatID(fd)
	return err == nil && haveID == wantID
}

// openInRoot opens path (O_PATH) as process pid sees it: inside its root,
// where an absolute symlink or ".." stays, however the host's files lie.
func openInRoot(pid int, path string) (int, error) {
	root, err := unix.Open(fmt.Sprintf("/proc/%d/root", pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(root)
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	for range 8 {
		fd, err := unix.Openat2(root, path, how)
		// EAGAIN: a rename or mount raced the walk; walk again.
		if !errors.Is(err, unix.EAGAIN) {
			return fd, err
		}
	}
	return -1, fmt.Errorf("%s keeps changing: %w", path, unix.EAGAIN)
}

// fstatID is the identity of the file fd is open on.
func fstatID(fd int) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileID{}, err
	}
	return fileID{st.Dev, st.Ino}, nil
}

// Unix socket diagnostics (linux/unix_diag.h): a request for one socket
// by inode, asking for the file it is bound to.
const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	udiagShowVFS     = 0x2
	unixDiagVFS      = 1 // attribute: struct unix_diag_vfs { u32 ino; u32 dev; }
	unixDiagReqLen   = 24
	unixDiagMsgLen   = 16
)

// boundFile is the file the unix socket with inode sockInode is bound to,
// as the kernel reports it (sock_diag) in the network namespace of pid,
// where the socket lives.
func boundFile(pid int, sockInode uint64) (fileID, error) {
	var id fileID
	err := inNetns(pid, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return fmt.Errorf("sock_diag: %w", err)
		}
		defer unix.Close(fd)
		id, err = askSockDiag(fd, uint32(sockInode))
		return err
	})
	return id, err
}

// askSockDiag sends the request for sockInode on the netlink socket fd and
// reads the answer.
func askSockDiag(fd int, sockInode uint32) (fileID, error) {
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fileID{}, err
	}
	req := make([]byte, unix.NLMSG_HDRLEN+unixDiagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], sockDiagByFamily)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], 1) // sequence
	r := req[unix.NLMSG_HDRLEN:]
	r[0] = unix.AF_UNIX
	ne.PutUint32(r[4:], ^uint32(0)) // every state
	ne.PutUint32(r[8:], sockInode)
	ne.PutUint32(r[12:], udiagShowVFS)
	ne.PutUint32(r[16:], ^uint32(0)) // no cookie
	ne.PutUint32(r[20:], ^uint32(0))
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fileID{}, fmt.Errorf("sock_diag: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fileID{}, fmt.Errorf("sock_diag: %w", err)
	}
	// One message: a netlink header (length, type, ...), then its data.
	if n < unix.NLMSG_HDRLEN || int(ne.Uint32(buf)) > n || int(ne.Uint32(buf)) < unix.NLMSG_HDRLEN {
		return fileID{}, errors.New("sock_diag: a short answer")
	}
	typ, data := ne.Uint16(buf[4:]), buf[unix.NLMSG_HDRLEN:ne.Uint32(buf)]
	if typ == unix.NLMSG_ERROR {
		if len(data) >= 4 {
			if errno := -int32(ne.Uint32(data)); errno != 0 {
				return fileID{}, fmt.Errorf("sock_diag: %w", unix.Errno(errno))
			}
		}
		return fileID{}, errors.New("sock_diag: an error without a code")
	}
	if len(data) < unixDiagMsgLen || ne.Uint32(data[4:]) != sockInode {
		return fileID{}, errors.New("sock_diag: an answer about another socket")
	}
	attrs := data[unixDiagMsgLen:]
	for len(attrs) >= unix.SizeofRtAttr {
		l, t := int(ne.Uint16(attrs)), ne.Uint16(attrs[2:])
		if l < unix.SizeofRtAttr || l > len(attrs) {
			break
		}
		if t == unixDiagVFS && l >= unix.SizeofRtAttr+8 {
			ino, dev := ne.Uint32(attrs[4:]), ne.Uint32(attrs[8:])
			// The kernel's own device number: major above 20 bits.
			return fileID{dev: unix.Mkdev(dev>>20, dev&0xfffff), ino: uint64(ino)}, nil
		}
		attrs = attrs[(l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1):]
	}
	return fileID{}, errors.New("sock_diag: the socket is bound to no file")
}

// inNetns runs fn in the network namespace of pid: at once if it is this
// process's, else on a thread of its own that enters it and ends with fn
// (never unlocked, so no other goroutine runs there).
func inNetns(pid int, fn func() error) error {
	theirs, err := statID(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return err
	}
	if ours, err := statID("/proc/self/ns/net"); err == nil && ours == theirs {
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			done <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("enter the shim's network namespace: %w", err)
			return
		}
		done <- fn()
	}()
	return <-done
}
