package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

// checkVMGuestCommands checks the commands vm.md gives for a shell in the
// VM: each is `it` (defined by the guest's job.sh) with a containerd
// generation and a cgroup driver the VM lane has, and a -test.run pattern
// naming integration tests that exist.
func checkVMGuestCommands(t *testing.T, b docBlock) {
	t.Helper()
	lib, err := os.ReadFile("vm/guest/job.sh")
	if err != nil || !strings.Contains(string(lib), "\nit() {") {
		t.Fatalf("vm/guest/job.sh defines no it(): %v", err)
	}
	tests := map[string]bool{}
	files, _ := filepath.Glob("*_test.go")
	for _, f := range files {
		data, _ := os.ReadFile(f)
		for _, m := range regexp.MustCompile(`(?m)^func (Test\w+)\(`).FindAllStringSubmatch(string(data), -1) {
			tests[m[1]] = true
		}
	}
	for _, cmd := range docCommands(b) {
		if cmd[0] != "it" {
			t.Errorf("%s:%d: %q is not an it command", b.page, b.line, strings.Join(cmd, " "))
			continue
		}
		for i := 1; i+1 < len(cmd); i += 2 {
			ok := true
			switch cmd[i] {
			case "-c":
				ok = cmd[i+1] == "1.6" || cmd[i+1] == "2.4.2"
			case "-d":
				ok = cmd[i+1] == string(harness.Cgroupfs) || cmd[i+1] == string(harness.Systemd)
			case "-test.run":
				for _, name := range regexp.MustCompile(`Test\w+`).FindAllString(cmd[i+1], -1) {
					ok = ok && tests[name]
				}
			}
			if !ok {
				t.Errorf("%s:%d: %s %s in %q", b.page, b.line, cmd[i], cmd[i+1], strings.Join(cmd, " "))
			}
		}
	}
}

// checkMakeTargets has make show (-n, nothing run) each make command of
// the block: every target and variable it names exists.
func checkMakeTargets(t *testing.T, b docBlock) {
	t.Helper()
	root, _ := filepath.Abs("..")
	for _, cmd := range docCommands(b) {
		if cmd[0] != "make" {
			t.Errorf("%s:%d: %q is not a make command", b.page, b.line, strings.Join(cmd, " "))
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := exec.CommandContext(ctx, "make", append([]string{"-n", "-C", root}, cmd[1:]...)...).CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s:%d: make -n %s: %v\n%s", b.page, b.line, strings.Join(cmd[1:], " "), err, out)
		}
	}
}

// checkUpgradeCommands runs each upgrade command of the block with its
// flags, scoped to a namespace that holds no shim (a later -namespace
// overrides the page's): the binary accepts every flag and finds nothing
// to move. An unscoped upgrade would move every tether shim on the host.
func checkUpgradeCommands(t *testing.T, b docBlock) {
	t.Helper()
	setup(t)
	shim := filepath.Join(suite.shimDir, "containerd-shim-tether-v2")
	ns := fmt.Sprintf("tether-docs-none-%d", os.Getpid())
	for _, cmd := range docCommands(b) {
		if len(cmd) < 2 || cmd[0] != "containerd-shim-tether-v2" || cmd[1] != "upgrade" {
			t.Errorf("%s:%d: %q is not an upgrade command", b.page, b.line, strings.Join(cmd, " "))
			continue
		}
		args := append(append([]string{"upgrade"}, cmd[2:]...), "-namespace", ns)
		out, err := exec.Command(shim, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "no tether shim serves") {
			t.Errorf("%s:%d: %s %v: %v\n%s", b.page, b.line, shim, args, err, out)
		}
	}
}

// checkUpgradeOutput checks that the example line has the fields, in
// order, that the upgrade command prints.
func checkUpgradeOutput(t *testing.T, b docBlock) {
	t.Helper()
	root, _ := filepath.Abs("..")
	src, err := os.ReadFile(filepath.Join(root, "cmd", "containerd-shim-tether-v2", "upgradecmd.go"))
	if err != nil {
		t.Fatal(err)
	}
	keys := regexp.MustCompile(`(\w+)=`)
	fields := func(s string) string {
		var names []string
		for _, m := range keys.FindAllStringSubmatch(s, -1) {
			names = append(names, m[1])
		}
		return strings.Join(names, " ")
	}
	for _, line := range strings.Split(strings.TrimSpace(b.text), "\n") {
		if want := fields(line); !strings.Contains(fieldsOfFormats(string(src), fields), "|"+want+"|") {
			t.Errorf("%s:%d: %q: no line of the upgrade command has the fields %q", b.page, b.line, line, want)
		}
	}
}

// fieldsOfFormats lists the key=value fields of every Fprintf format in src.
func fieldsOfFormats(src string, fields func(string) string) string {
	out := "|"
	for _, m := range regexp.MustCompile(`Fprintf\(\w+, "([^"]*)"`).FindAllStringSubmatch(src, -1) {
		out += fields(m[1]) + "|"
	}
	return out
}

// checkGoTestRun checks a documented go test command: the tests it runs
// exist and the containerd directory is the one make containerd2 builds.
func checkGoTestRun(t *testing.T, b docBlock) {
	t.Helper()
	root, _ := filepath.Abs("..")
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	version := regexp.MustCompile(`(?m)^CONTAINERD2_VERSION\s*:=\s*(\S+)`).FindSubmatch(mk)
	for _, cmd := range docCommands(b) {
		for i, arg := range cmd {
			if dir, ok := strings.CutPrefix(arg, "TETHER_CONTAINERD_DIR="); ok && (version == nil || dir != "/var/cache/tether/containerd-"+string(version[1])) {
				t.Errorf("%s:%d: %s is not where make containerd2 builds containerd", b.page, b.line, dir)
			}
			if arg == "-run" && i+1 < len(cmd) {
				for _, name := range strings.Split(cmd[i+1], "|") {
					if !repoMentions(t, root, "func "+name+"(") {
						t.Errorf("%s:%d: no test %s", b.page, b.line, name)
					}
				}
			}
		}
	}
}

// checkDebCommands checks the package's commands without installing
// anything (the package test does, on a containerd of its own): make's
// target exists, and the file apt is given is what make deb writes.
func checkDebCommands(t *testing.T, b docBlock) {
	t.Helper()
	root, _ := filepath.Abs("..")
	src, err := os.ReadFile(filepath.Join(root, "packaging", "deb", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range docCommands(b) {
		switch {
		case cmd[0] == "make":
			checkMakeTargets(t, docBlock{page: b.page, line: b.line, text: strings.Join(cmd, " ")})
		case len(cmd) == 3 && (cmd[0] == "apt" || cmd[0] == "apt-get") && cmd[1] == "install":
			dir, pattern := filepath.Split(cmd[2])
			if !strings.Contains(string(src), `"%s_%s_%s.deb"`) || pattern != "tether_*.deb" ||
				!strings.Contains(string(mk), "-out "+strings.Trim(dir, "./")) {
				t.Errorf("%s:%d: %s is not where make deb writes the package", b.page, b.line, cmd[2])
			}
		default:
			t.Errorf("%s:%d: no way to check %q", b.page, b.line, strings.Join(cmd, " "))
		}
	}
}
