package failpoint

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Steps of the shim's own fail as a test build says (Hit): the upgrade
// tests build a binary whose failpoint file (set at link time with -X)
// names the steps that fail and how, and check that nothing is lost. In
// every real build the file is unset and Hit returns nil at once.

// file names the failpoints of a test build, set with -ldflags -X: each
// line "name=error" or "name=panic"; a relative name is beside the binary
// (the upgrade tests copy it into a directory of their own). It is read at
// every Hit, so a test changes it between runs of one binary.
var file string

// Hit fails the step name as the failpoint file says: an error, a panic,
// or nothing.
func Hit(name string) error {
	if file == "" {
		return nil
	}
	path := file
	if !filepath.IsAbs(path) {
		exe, err := os.Executable()
		if err != nil {
			return nil
		}
		path = filepath.Join(filepath.Dir(exe), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(data), "\n") {
		point, kind, _ := strings.Cut(strings.TrimSpace(line), "=")
		if point != name {
			continue
		}
		switch kind {
		case "panic":
			panic(fmt.Sprintf("failpoint %s (test build)", name))
		case "error":
			return fmt.Errorf("failpoint %s (test build)", name)
		}
	}
	return nil
}
