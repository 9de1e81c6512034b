package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"time"
)

// featuresTimeout bounds `<runtime> features`, which only prints what the
// binary supports.
const featuresTimeout = 10 * time.Second

// Features returns what `<runtime> features` prints for the runtime cfg
// names: the OCI runtime features document (runtime-spec features.md), as
// JSON. A runtime without the command (older crun, youki) gets an error
// saying so. It runs outside any shim (the -info action), so it waits for
// the command itself rather than through a reaper.
func Features(ctx context.Context, cfg Config) (doc []byte, err error) {
	path, err := lookPath(cfg.Binary)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, featuresTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, "features")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s features: %w (%s)", path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if !json.Valid(out) {
		return nil, fmt.Errorf("%s features: output is not JSON", path)
	}
	return out, nil
}
