package manager

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/bundle"
	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/oci"
	"github.com/tether-shim/tether/proto/bootstrap"
	"github.com/tether-shim/tether/proto/types"
	"github.com/tether-shim/tether/shim"
)

// socketDir holds the shims' sockets: a directory only root may enter.
const socketDir = "/run/tether"

// groupLabels are the annotations that put containers into one shim; the
// first one present wins. Kubernetes pods carry the CRI sandbox id.
var groupLabels = []string{
	"io.containerd.tether.v2.group",
	"io.kubernetes.cri.sandbox-id",
}

// Start implements the "start" action: it runs in the bundle directory and
// prints the address of the shim that will serve this container, starting a
// new shim unless the container's group already has one. It answers in the
// form the caller speaks: a plain address to containerd 1.x, a bootstrap
// result to containerd 2.x, which writes bootstrap parameters on stdin.
func Start(o Options) (err error) {
	in, err := readStartInput(os.Stdin, o)
	if err != nil {
		return err
	}
	group, err := groupOf("config.json", o.ID)
	if err != nil {
		return err
	}
	dir := socketDir
	if in.socketDir != "" {
		// containerd 2.x may name where sockets go; tether keeps its own
		// root-only directory there.
		dir = filepath.Join(in.socketDir, "tether")
	}
	address := socketAddress(dir, o.Address, o.Namespace, group)
	// Starts for one group (containers of a pod) may race; one at a time
	// decides whether a shim is there, binds and spawns.
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	l, err := listen(address)
	if errors.Is(err, errShimRunning) {
		if err := bundle.WriteAddress(".", address); err != nil {
			return err
		}
		return in.answer(address)
	}
	if err != nil {
		return err
	}
	path := socketPath(address)
	alias := socketAlias(o.Address, o.Namespace, group)
	defer func() {
		l.Close()
		if err != nil {
			os.Remove(path)
			unlinkSocketAlias(alias, path)
		}
	}()
	linkSocketAlias(alias, path, slog.Default())
	if err := bundle.WriteAddress(".", address); err != nil {
		return err
	}
	cmd, err := spawnShim(o, l)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			cmd.Process.Kill()
		}
	}()
	// Of the runtime options, only the shim's cgroup matters before Create.
	if in.options.ShimCgroup != "" {
		if err := cgroup.Join(in.options.ShimCgroup, cmd.Process.Pid); err != nil {
			return err
		}
	}
	adjustOOMScore(cmd.Process.Pid)
	return in.answer(address)
}

// startInput is what containerd wrote on start's stdin.
type startInput struct {
	bootstrap bool       // containerd 2.x bootstrap parameters
	options   oci.Config // runtime options, if any came
	socketDir string     // where containerd 2.x wants sockets, if it says
}

// readStartInput tells containerd 2.x's bootstrap parameters (which name
// this very instance and namespace) from 1.x's runtime options (an Any).
func readStartInput(r io.Reader, o Options) (startInput, error) {
	var in startInput
	data, err := io.ReadAll(io.LimitReader(r, maxOptionsSize))
	if err != nil || len(data) == 0 {
		return in, nil // no stdin, no options
	}
	var params bootstrap.BootstrapParams
	if proto.Unmarshal(data, &params) == nil && params.GetInstanceId() == o.ID && params.GetNamespace() == o.Namespace {
		in.bootstrap = true
		in.socketDir = params.GetSocketDir()
		for _, ext := range params.GetExtensions() {
			// Extensions of other kinds are not runtime options.
			if cfg, err := oci.ParseOptions(ext.GetValue()); err == nil {
				in.options = cfg
			}
		}
		return in, nil
	}
	var a anypb.Any
	if err := proto.Unmarshal(data, &a); err != nil {
		return in, fmt.Errorf("decode runtime options from stdin: %w", err)
	}
	in.options, err = oci.ParseOptions(&a)
	return in, err
}

// answer prints the shim's address in the caller's form.
func (in startInput) answer(address string) error {
	if !in.bootstrap {
		_, err := fmt.Fprint(os.Stdout, address)
		return err
	}
	result, err := bootstrapResult(address)
	if err != nil {
		return err
	}
	data, err := proto.Marshal(result)
	if err != nil {
		return fmt.Errorf("encode bootstrap result: %w", err)
	}
	_, err = os.Stdout.Write(data)
	return err
}

// bootstrapResult is the answer to containerd 2.x: the task API version,
// the address, and the mount types and transforms tether performs itself:
// none beyond what a rootfs mount list holds, like containerd's runc shim, so
// containerd's mount manager does everything else. Saying so (even with an
// empty list) is what stops containerd 2.4 from running `-info` on every
// task create to look for the deprecated containerd.io/runtime-allow-mounts
// annotation; it skips that only for the runtimes it knows by name (runc,
// runhcs).
func bootstrapResult(address string) (*bootstrap.BootstrapResult, error) {
	caps, err := anypb.New(&types.MountCapabilities{})
	if err != nil {
		return nil, fmt.Errorf("encode mount capabilities: %w", err)
	}
	return &bootstrap.BootstrapResult{
		Version:    shimVersion,
		Address:    address,
		Protocol:   "ttrpc",
		Extensions: []*bootstrap.Extension{{Value: caps}},
	}, nil
}

// shimVersion is the task API the shim speaks to containerd 2.x: v3 (it
// serves v2 as well, for 1.x and for clients that downgrade).
const shimVersion = 3

// groupOf returns the shim group of the container whose spec is at path:
// the first group annotation present, or the container's own id. A group
// value must be a well-formed id: it names a socket, and a value like
// "../other-namespace/pod" must never reach another namespace's shim.
//
// A bundle without a spec is a pod sandbox's (containerd 2.x starts a shim
// sandboxer's shim that way): its group is the pod, named by its own id, as
// its containers' sandbox-id annotation names it.
func groupOf(path, id string) (string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return id, nil
	}
	if err != nil {
		return "", fmt.Errorf("read bundle config: %w", err)
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return "", fmt.Errorf("bundle config.json is not valid JSON: %w", err)
	}
	for _, label := range groupLabels {
		if g, ok := spec.Annotations[label]; ok {
			if err := shim.ValidateID("shim group (annotation "+label+")", g); err != nil {
				return "", err
			}
			return g, nil
		}
	}
	return id, nil
}

// socketAddress names the socket of a group's shim in dir: a hash of
// containerd's address, the namespace and the group, each length-prefixed so
// no choice of values can make two triples hash alike by shifting bytes
// from one field to the next. Two containerds or two namespaces never share
// a shim. FNV-128 suffices (starts are serialized and a socket in use is
// never taken over) and keeps crypto out of the binary.
func socketAddress(dir, containerdAddress, ns, group string) string {
	h := fnv.New128a()
	for _, field := range []string{containerdAddress, ns, group} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(field)))
		h.Write(n[:])
		h.Write([]byte(field))
	}
	return "unix://" + filepath.Join(dir, hex.EncodeToString(h.Sum(nil)))
}

func socketPath(address string) string {
	return strings.TrimPrefix(address, "unix://")
}

var errShimRunning = errors.New("a shim already serves this socket")

// lockDir creates the socket directory, which only root may enter, and
// takes an exclusive lock on it.
func lockDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open socket directory: %w", err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock socket directory: %w", err)
	}
	return func() { unix.Close(fd) }, nil
}

// listen creates the socket file, mode 0600, in its (root-only) directory.
// A socket nobody answers on is stale and replaced.
func listen(address string) (*net.UnixListener, error) {
	path := socketPath(address)
	for attempt := 0; ; attempt++ {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err == nil {
			l.SetUnlinkOnClose(false) // the shim process owns the file now
			if err := os.Chmod(path, 0o600); err != nil {
				l.Close()
				os.Remove(path)
				return nil, err
			}
			return l, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || attempt > 0 {
			return nil, fmt.Errorf("listen on %s: %w", path, err)
		}
		if socketAnswers(path) {
			return nil, errShimRunning
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
}

// spawnShim starts the serving shim: this binary without an action, in its
// own session, with the listening socket as fd 3 and no stdio (containerd
// reads start's output until every copy of its stdout is closed).
func spawnShim(o Options, l *net.UnixListener) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	f, err := l.File()
	if err != nil {
		return nil, fmt.Errorf("socket file: %w", err)
	}
	defer f.Close()
	args := []string{"-namespace", o.Namespace, "-id", o.ID, "-address", o.Address, "-publish-binary", o.PublishBinary}
	if o.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir, _ = os.Getwd()
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if os.Getenv("GOMAXPROCS") == "" {
		cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start shim: %w", err)
	}
	return cmd, nil
}

// adjustOOMScore makes the shim a little more likely than containerd to be
// chosen by the OOM killer, never less: the kernel refuses lowering it anyway.
func adjustOOMScore(pid int) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", os.Getppid()))
	if err != nil {
		return
	}
	score, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || score >= 1000 {
		return
	}
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), []byte(strconv.Itoa(score+1)), 0)
}
