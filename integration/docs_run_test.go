package integration

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

// docsNamespace is the private containerd namespace the documentation's
// commands run in, with busybox under the name the pages use.
func docsNamespace(t *testing.T) *harness.Containerd {
	t.Helper()
	setup(t)
	c := *suite.ctd
	c.Namespace = "tether-docs"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if res, err := c.Ctr(ctx, nil, "images", "ls", "-q"); err == nil && strings.Contains(res.Stdout, "docker.io/library/busybox:latest") {
		return &c
	}
	if err := c.ImportBusybox(ctx, suite.busybox); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ctr(ctx, nil, "images", "tag", harness.BusyboxImageName, "docker.io/library/busybox:latest"); err != nil {
		t.Fatal(err)
	}
	return &c
}

// checkCtrRun runs the block's ctr commands against a private containerd
// (the options file they name holds options), checks its make commands
// with make -n and nothing else: a command that ends in echo prints its
// words, or, if refusal is set, fails saying it.
func checkCtrRun(t *testing.T, b docBlock, options, refusal string) {
	t.Helper()
	c := docsNamespace(t)
	optionsFile := filepath.Join(t.TempDir(), "tether.toml")
	if err := os.WriteFile(optionsFile, []byte(options), 0o644); err != nil {
		t.Fatal(err)
	}
	ran := 0
	for _, cmd := range docCommands(b) {
		switch cmd[0] {
		case "make":
			checkMakeTargets(t, docBlock{page: b.page, line: b.line, text: strings.Join(cmd, " ")})
			continue
		case "ctr":
		default:
			t.Errorf("%s:%d: no way to check %q", b.page, b.line, strings.Join(cmd, " "))
			continue
		}
		args := slicesReplace(cmd[1:], docOptionsPath, optionsFile)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		res, err := c.Ctr(ctx, nil, args...)
		cancel()
		ran++
		if refusal != "" {
			if err == nil || !strings.Contains(res.Stderr, refusal) {
				t.Errorf("%s:%d: %v (stderr %q), want a refusal saying %q", b.page, b.line, err, res.Stderr, refusal)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s:%d: %v", b.page, b.line, err)
			continue
		}
		if want := echoed(cmd); want != "" && res.Stdout != want {
			t.Errorf("%s:%d: %q printed %q, want %q", b.page, b.line, strings.Join(cmd, " "), res.Stdout, want)
		}
	}
	if ran == 0 {
		t.Errorf("%s:%d: no ctr command in the block", b.page, b.line)
	}
}

func slicesReplace(args []string, from, to string) []string {
	out := append([]string{}, args...)
	for i, a := range out {
		if a == from {
			out[i] = to
		}
	}
	return out
}

// echoed is what a command ending in `echo WORDS` prints, or "".
func echoed(cmd []string) string {
	for i := len(cmd) - 1; i >= 0; i-- {
		if cmd[i] == "echo" {
			return strings.Join(cmd[i+1:], " ") + "\n"
		}
	}
	return ""
}

// checkNerdctlRun runs the block's nerdctl commands against a private
// containerd.
func checkNerdctlRun(t *testing.T, b docBlock) {
	t.Helper()
	n := startNerdctl(t, nerdctlBinary(t), harness.Runtime)
	n.must(nil, "tag", harness.BusyboxImageName, "docker.io/library/busybox:latest")
	for _, cmd := range docCommands(b) {
		if cmd[0] != "nerdctl" {
			t.Errorf("%s:%d: %q is not a nerdctl command", b.page, b.line, strings.Join(cmd, " "))
			continue
		}
		res, err := n.exec(nil, cmd[1:]...)
		if err != nil {
			t.Errorf("%s:%d: %v", b.page, b.line, err)
		} else if want := echoed(cmd); want != "" && res.Stdout != want {
			t.Errorf("%s:%d: %q printed %q, want %q", b.page, b.line, strings.Join(cmd, " "), res.Stdout, want)
		}
	}
}

// checkRuntimeClass checks that a RuntimeClass's handler is one the
// documented CRI configuration has, and that a pod names a RuntimeClass
// the block defines.
func checkRuntimeClass(t *testing.T, b docBlock, blocks map[string][]docBlock) {
	t.Helper()
	handlers := map[string]bool{}
	for _, c := range blocks["cri-config-2"] {
		for _, m := range regexp.MustCompile(`\.containerd\.runtimes\.'?([a-z0-9-]+)'?\]`).FindAllStringSubmatch(c.text, -1) {
			handlers[m[1]] = true
		}
	}
	classes := map[string]bool{}
	kind := ""
	for _, line := range strings.Split(b.text, "\n") {
		key, value, _ := strings.Cut(strings.TrimSpace(line), ":")
		value = strings.TrimSpace(value)
		switch {
		case line == "---":
			kind = ""
		case key == "kind":
			kind = value
		case key == "name" && kind == "RuntimeClass":
			classes[value] = true
		case key == "handler" && !handlers[value]:
			t.Errorf("%s:%d: handler %q is not in the documented CRI configuration (%v)", b.page, b.line, value, sortedKeys(handlers))
		case key == "runtimeClassName" && !classes[value]:
			t.Errorf("%s:%d: runtimeClassName %q names no RuntimeClass of the block", b.page, b.line, value)
		}
	}
	if len(classes) == 0 {
		t.Errorf("%s:%d: no RuntimeClass", b.page, b.line)
	}
}
