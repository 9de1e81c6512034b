package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/tether-shim/tether/integration/bench/results"
)

// binaries are the run's copies of every program it measures.
type binaries struct {
	shims string // tether and containerd 1.x's runc shim, for containerd's PATH
	runc2 string // containerd 2.x's containerd-shim-runc-v2
	floor map[string]string
}

// floorPrograms are the packages of the floor programs, by name.
var floorPrograms = map[string]string{
	results.Floor:      "./integration/bench/floor/taskserver",
	results.FloorTTRPC: "./integration/bench/floor/ttrpcserver",
	results.GoSleep:    "./integration/bench/floor/sleeper",
}

// stageBinaries builds the floor programs as tether is built (static,
// stripped, -trimpath) and copies them, tether and both runc shims into the
// run's directory, the same way. A process's RSS counts every page of its
// binary it maps, and the kernel maps a binary's page cache a large folio
// at a time around a fault: how much that is depends on how the file got
// into the page cache (written by a linker through mmap, by a package
// manager, read back after eviction). Written alike, the binaries compare
// alike.
func stageBinaries(c config, dir string) (binaries, error) {
	bins := binaries{shims: filepath.Join(dir, "shims"), runc2: filepath.Join(dir, "shims2", "containerd-shim-runc-v2"), floor: map[string]string{}}
	build := filepath.Join(dir, "build")
	for _, d := range []string{bins.shims, filepath.Dir(bins.runc2), build, filepath.Join(dir, "floor")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return bins, err
		}
	}
	for name, pkg := range floorPrograms {
		out := filepath.Join(build, name)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return bins, fmt.Errorf("build %s: %v: %s", pkg, err, b)
		}
		bins.floor[name] = filepath.Join(dir, "floor", name)
		if err := copyFile(out, bins.floor[name]); err != nil {
			return bins, err
		}
	}
	runc := c.runcShim
	if runc == "" {
		var err error
		if runc, err = exec.LookPath(runtimes[1].Binary); err != nil {
			return bins, err
		}
	}
	copies := map[string]string{
		filepath.Join(c.shimDir, runtimes[0].Binary): filepath.Join(bins.shims, runtimes[0].Binary),
		runc: filepath.Join(bins.shims, runtimes[1].Binary),
	}
	if c.runs("pods") {
		copies[filepath.Join(c.pod.containerd2, "containerd-shim-runc-v2")] = bins.runc2
	}
	for from, to := range copies {
		if err := copyFile(from, to); err != nil {
			return bins, fmt.Errorf("%w (make build; make containerd2 for the pods)", err)
		}
	}
	return bins, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// floorSet is n running instances of each floor program.
type floorSet struct {
	cmds map[string][]*exec.Cmd
}

// startFloor starts n instances of each floor program, each server on a
// socket of its own.
func (b *bench) startFloor(n int) (*floorSet, error) {
	fs := &floorSet{cmds: map[string][]*exec.Cmd{}}
	for i := 0; i < n; i++ {
		for name, path := range b.bins.floor {
			args := []string{filepath.Join(b.c.tmp, "floor", fmt.Sprintf("%s-%d.sock", name, i))}
			if name == results.GoSleep {
				args = nil
			}
			cmd := exec.Command(path, args...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if err := cmd.Start(); err != nil {
				fs.stop()
				return nil, err
			}
			fs.cmds[name] = append(fs.cmds[name], cmd)
		}
	}
	return fs, nil
}

// pids are the floor program's live instances.
func (fs *floorSet) pids(name string) []int {
	var pids []int
	for _, cmd := range fs.cmds[name] {
		pids = append(pids, cmd.Process.Pid)
	}
	return pids
}

func (fs *floorSet) stop() {
	for _, cmds := range fs.cmds {
		for _, cmd := range cmds {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
}
