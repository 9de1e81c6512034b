package manager

import (
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/tether-shim/tether/internal/sha256"
)

// containerdSocketDir is where containerd's shims put their sockets (its
// pkg/shim.SocketAddress), named by the SHA-256 of "ADDRESS/NAMESPACE/GROUP".
const containerdSocketDir = "/run/containerd/s"

// socketAlias is the path where a shim of containerd's own would have put
// the group's socket. tether's socket stays in its own directory (where
// `containerd-shim-tether-v2 upgrade` finds tether shims); a symlink here
// lets what finds shims by containerd's convention (ctr shim, containerd's
// CRI integration suite) dial tether's too.
func socketAlias(containerdAddress, ns, group string) string {
	sum := sha256.Sum([]byte(filepath.Join(containerdAddress, ns, group)))
	return filepath.Join(containerdSocketDir, hex.EncodeToString(sum[:]))
}

// linkSocketAlias points alias at the shim's socket. It is best effort: a
// shim without it only cannot be found by containerd's convention. A live
// socket there is left alone; a stale link or socket is replaced.
func linkSocketAlias(alias, socket string, log *slog.Logger) {
	if target, err := os.Readlink(alias); err == nil && target == socket {
		return
	}
	if _, err := os.Lstat(alias); err == nil {
		if socketAnswers(alias) {
			log.Warn("a socket answers at containerd's path for this shim; not linked", "path", alias)
			return
		}
		os.Remove(alias)
	}
	if err := os.MkdirAll(filepath.Dir(alias), 0o700); err != nil {
		log.Warn("link the socket at containerd's path", "error", err)
		return
	}
	if err := os.Symlink(socket, alias); err != nil {
		log.Warn("link the socket at containerd's path", "error", err)
	}
}

// unlinkSocketAlias removes alias if it still points at socket.
func unlinkSocketAlias(alias, socket string) {
	if target, err := os.Readlink(alias); err == nil && target == socket {
		if err := os.Remove(alias); err != nil && !errors.Is(err, fs.ErrNotExist) {
			slog.Warn("remove the socket's link", "path", alias, "error", err)
		}
	}
}

// SocketAliasOf is the link at containerd's path for the socket of the
// shim of container id started in the bundle that is the working directory
// (the serving shim's), or "" if its group cannot be told.
func SocketAliasOf(containerdAddress, ns, id string) string {
	group, err := groupOf("config.json", id)
	if err != nil {
		return ""
	}
	return socketAlias(containerdAddress, ns, group)
}

// UnlinkSocketAlias removes alias if it still points at socket (a serving
// shim that removes its socket).
func UnlinkSocketAlias(alias, socket string) { unlinkSocketAlias(alias, socket) }
