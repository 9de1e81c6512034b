// Package bundle names, writes and reads the files the shim keeps in a
// container's bundle for whoever comes after it: the delete action that
// cleans up after a lost shim reads the init's pid, the exit statuses and
// the runtime options from them. It never leaves a file half written.
package bundle

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tether-shim/tether/internal/atomicfile"
)

// Files of the shim in a bundle.
const (
	// InitPidFile is where the runtime writes the init's pid.
	InitPidFile = "init.pid"
	// RuntimeConfigFile holds the container's runtime options, so the
	// delete action drives the same runtime.
	RuntimeConfigFile = "tether-runtime.json"
	// AddressFile names the shim's socket, for containerd.
	AddressFile = "address"
)

// ExecPidFile is where the runtime writes an exec's pid.
func ExecPidFile(bundle, execID string) string {
	return filepath.Join(bundle, "exec-"+execID+".pid")
}

// ExitFile is where the exit status of the init (empty execID) or an exec
// is recorded.
func ExitFile(bundle, execID string) string {
	if execID == "" {
		return filepath.Join(bundle, "init.exit")
	}
	return filepath.Join(bundle, "exec-"+execID+".exit")
}

// WriteExit records an exit as "<status> <unix nanoseconds>".
func WriteExit(path string, status int, at time.Time) error {
	return atomicfile.Write(path, []byte(fmt.Sprintf("%d %d\n", status, at.UnixNano())))
}

// ReadExit reads an exit written by WriteExit.
func ReadExit(path string) (status int, at time.Time, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, time.Time{}, err
	}
	fields := strings.Fields(string(data))
	if len(fields) != 2 {
		return 0, time.Time{}, fmt.Errorf("exit file %s: malformed", path)
	}
	status, err = strconv.Atoi(fields[0])
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("exit file %s: %w", path, err)
	}
	ns, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("exit file %s: %w", path, err)
	}
	return status, time.Unix(0, ns), nil
}

// WriteAddress writes the shim's address into the bundle's address file
// (dir is the bundle, or "." for the working directory).
func WriteAddress(dir, address string) error {
	path, err := filepath.Abs(filepath.Join(dir, AddressFile))
	if err != nil {
		return err
	}
	return atomicfile.Write(path, []byte(address))
}

// RemoveShimFiles removes every file the shim keeps in bundle (not the
// address file, which containerd removes with the bundle).
func RemoveShimFiles(bundle string) {
	for _, pattern := range []string{InitPidFile, "init.exit", RuntimeConfigFile, "exec-*.pid", "exec-*.exit", ".runtime-*.log"} {
		matches, _ := filepath.Glob(filepath.Join(bundle, pattern))
		for _, m := range matches {
			os.Remove(m)
		}
	}
}
