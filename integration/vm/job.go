package main

import (
	"context"
	"embed"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/tether-shim/tether/integration/harness"
)

// guestJob is the guest's side of a job (not part of the image).
//
//go:embed guest/job.sh
var guestJob embed.FS

// binaries are the host's builds a job takes into the VM (the guest has no
// Go and no network).
type binaries struct {
	moduleRoot string
	ctd2Dir    string // containerd 2.x's containerd, ctr and runc shim (make containerd2)
	ctd2       string // its version, e.g. 2.4.2
	runc       string // runc as containerd 2.x tests with it (make runc)
	criu       string // CRIU that works on current kernels (make criu), or ""
}

// job is one boot's work, under a directory of its own: share/, the
// guest's /mnt/job (job.sh, run.sh, a script), and the binaries, made into
// a disk the guest mounts at /opt/tether.
type job struct{ dir string }

func (j job) share() string { return filepath.Join(j.dir, "share") }
func (j job) disk() string  { return filepath.Join(j.dir, "bin.ext4") }

// prepare fills the job: the disk with the integration test binary (go
// test -c), test2json, every program the tests build (prebuilt/),
// containerd 2.x, runc and criu; job.sh; and run.sh, the script the guest
// runs, if run is not empty.
func (j job) prepare(ctx context.Context, b binaries, run []string) error {
	bin := filepath.Join(j.dir, "bin")
	prebuilt := filepath.Join(bin, "prebuilt")
	if err := os.MkdirAll(prebuilt, 0o755); err != nil {
		return err
	}
	test := exec.CommandContext(ctx, "go", "test", "-c", "-o", filepath.Join(bin, "integration.test"), "./integration")
	test.Dir, test.Stdout, test.Stderr = b.moduleRoot, os.Stderr, os.Stderr
	test.Env = append(os.Environ(), "CGO_ENABLED=0")
	if err := test.Run(); err != nil {
		return fmt.Errorf("build the integration test binary: %w", err)
	}
	out, err := exec.CommandContext(ctx, "go", "tool", "-n", "test2json").Output()
	if err != nil {
		return fmt.Errorf("go tool -n test2json: %w", err)
	}
	if err := linkOrCopy(strings.TrimSpace(string(out)), filepath.Join(bin, "test2json")); err != nil {
		return err
	}
	if err := harness.BuildPrograms(b.moduleRoot, prebuilt); err != nil {
		return err
	}
	ctd2 := filepath.Join(bin, "containerd-v"+b.ctd2)
	if err := os.MkdirAll(ctd2, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		if err := linkOrCopy(filepath.Join(b.ctd2Dir, name), filepath.Join(ctd2, name)); err != nil {
			return fmt.Errorf("containerd %s (make containerd2): %w", b.ctd2, err)
		}
	}
	if err := linkOrCopy(b.runc, filepath.Join(bin, "runc")); err != nil {
		return fmt.Errorf("runc (make runc): %w", err)
	}
	if b.criu != "" {
		if err := linkOrCopy(b.criu, filepath.Join(bin, "criu")); err != nil {
			return fmt.Errorf("criu (make criu): %w", err)
		}
	}
	if err := makeDisk(ctx, bin, j.disk(), 64<<20); err != nil {
		return err
	}
	if err := os.MkdirAll(j.share(), 0o755); err != nil {
		return err
	}
	lib, err := guestJob.ReadFile("guest/job.sh")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(j.share(), "job.sh"), lib, 0o644); err != nil {
		return err
	}
	if len(run) == 0 {
		return nil
	}
	script := "#!/bin/bash\n# Written by integration/vm for one boot.\n. /mnt/job/job.sh\njob_start\n" +
		strings.Join(run, "\n") + "\njob_end\n"
	return os.WriteFile(filepath.Join(j.share(), "run.sh"), []byte(script), 0o755)
}

// suiteLine is run.sh's line for one integration suite run.
func suiteLine(containerd, driver, run, skip string) string {
	return fmt.Sprintf("run_suite integration %s %s %s %s", containerd, driver, shellQuote(run), shellQuote(skip))
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// linkOrCopy puts src at dst: a hard link where the file systems allow,
// else a copy (executable).
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
