package oci

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// scanLog calls keep for each line of the log at path (a missing log has no
// lines); lines are at most 1 MiB.
func scanLog(path string, keep func(line []byte)) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		keep(sc.Bytes())
	}
}

// lastLoggedError returns the last error-level message of a runtime JSON log
// (one {"level":..,"msg":..} object per line), or its last message of any level.
func lastLoggedError(path string) string {
	var lastErr, last string
	scanLog(path, func(line []byte) {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(line, &entry) != nil || entry.Msg == "" {
			return
		}
		last = entry.Msg
		if entry.Level == "error" || entry.Level == "fatal" {
			lastErr = entry.Msg
		}
	})
	if lastErr != "" {
		return lastErr
	}
	return last
}

// criuLogLines is how many of CRIU's error lines a failure carries.
const criuLogLines = 5

// withCriuLog adds CRIU's own errors (the last lines of its log that say
// "Error") to a failed checkpoint or restore.
func withCriuLog(err error, path string) error {
	if err == nil {
		return nil
	}
	var lines []string
	scanLog(path, func(line []byte) {
		if s := string(line); strings.Contains(s, "Error") {
			lines = append(lines, strings.TrimSpace(s))
		}
	})
	if len(lines) == 0 {
		return err
	}
	if len(lines) > criuLogLines {
		lines = lines[len(lines)-criuLogLines:]
	}
	return fmt.Errorf("%w; criu (%s): %s", err, path, strings.Join(lines, "; "))
}

func containsFold(s, substr string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(substr))
}
