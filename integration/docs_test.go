package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/internal/docblocks"
	"github.com/tether-shim/tether/oci"
	"github.com/tether-shim/tether/proto/runtimeoptions"
)

// docBlock is a fenced block of a documentation page and the check the
// comment before it names (<!-- docs-test: NAME -->).
type docBlock struct {
	page, check, lang, text string
	line                    int
}

// docPendingPages are pages the index links to that other work adds; a
// link to one of them may dangle until it lands.
var docPendingPages = map[string]bool{"docs/conformance.md": true}

// TestDocs checks the front page and every page of docs/ against the code:
// each fenced block names its check, configuration is what the tests
// generate and what containerd loads, commands run (or their flags are
// checked where running them is not safe), and the tests, files and pages
// the prose names exist.
func TestDocs(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	pages, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	pages = append([]string{filepath.Join(root, "README.md")}, pages...)
	var blocks []docBlock
	for _, p := range pages {
		blocks = append(blocks, readDocBlocks(t, root, p)...)
	}
	byCheck := map[string][]docBlock{}
	for _, b := range blocks {
		byCheck[b.check] = append(byCheck[b.check], b)
	}
	checks := docChecks(byCheck)
	for _, b := range blocks {
		if _, ok := checks[b.check]; !ok {
			t.Errorf("%s:%d: a ```%s block with check %q: every block names one of %v", b.page, b.line, b.lang, b.check, sortedKeys(checks))
		}
	}
	for _, name := range sortedKeys(checks) {
		t.Run(name, func(t *testing.T) {
			if len(byCheck[name]) == 0 {
				t.Fatalf("no block of the documentation is checked by %s", name)
			}
			for _, b := range byCheck[name] {
				checks[name](t, b)
			}
		})
	}
	t.Run("names", func(t *testing.T) { checkDocNames(t, root, pages) })
}

// readDocBlocks returns the fenced blocks of the page at path.
func readDocBlocks(t *testing.T, root, path string) []docBlock {
	rel, _ := filepath.Rel(root, path)
	read, err := docblocks.Read(path, rel)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []docBlock
	for _, b := range read {
		blocks = append(blocks, docBlock{page: b.Page, check: b.Check, lang: b.Lang, text: b.Text, line: b.Line})
	}
	return blocks
}

func sortedKeys[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// docOptions are the runtime options the documentation's CRI
// configurations show, as the CRI tests give them (with their own paths).
const docOptions = "BinaryName = \"/usr/sbin/runc\"\nRoot = \"/run/containerd/runc\"\nSystemdCgroup = false\n"

// docNodeOptions are docOptions with the cgroup driver d, as
// harness.NodeOptions writes them for the CRI tests.
func docNodeOptions(d harness.CgroupDriver) string {
	return harness.NodeOptions("/usr/sbin/runc", "/run/containerd/runc", d)
}

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

// docOptionsPath is where the documentation keeps tether's options file.
const docOptionsPath = "/etc/containerd/tether.toml"

// docChecks are the checks by name; a check may read the other blocks.
func docChecks(blocks map[string][]docBlock) map[string]func(*testing.T, docBlock) {
	criConfig2 := func(s harness.CRISettings) func(*testing.T, docBlock) {
		return func(t *testing.T, b docBlock) {
			checkSame(t, b, harness.CRIConfig(2, s))
			checkContainerdLoads(t, b, 2, b.text)
		}
	}
	return map[string]func(*testing.T, docBlock){
		"make-targets": checkMakeTargets,
		"ctr-run":      func(t *testing.T, b docBlock) { checkCtrRun(t, b, "", "") },
		"ctr-run-options": func(t *testing.T, b docBlock) {
			// The options file the block names holds the crun example.
			makeCrunRunnable(t)
			for _, o := range blocks["options-crun"] {
				// As the page says, Debian 12's crun refuses containerd 2.x's spec.
				refusal := ""
				if suite.ctd.Major >= 2 {
					refusal = "unknown version specified"
				}
				checkCtrRun(t, b, o.text, refusal)
			}
		},
		"nerdctl-run": checkNerdctlRun,
		"readme-cri-handler": func(t *testing.T, b docBlock) {
			checkContainerdLoads(t, b, 2, b.text)
		},
		"runtimeclass":     func(t *testing.T, b docBlock) { checkRuntimeClass(t, b, blocks) },
		"runtimeclass-pod": func(t *testing.T, b docBlock) { checkRuntimeClass(t, b, blocks) },
		"options-crun":     checkOptionsFile,
		"cri-options-file": func(t *testing.T, b docBlock) {
			checkSame(t, b, "# "+docOptionsPath+"\n"+docOptions)
			checkOptionsFile(t, b)
		},
		"cri-config-2": criConfig2(harness.CRISettings{Options: docOptions}),
		"cri-config-pauseless": criConfig2(harness.CRISettings{Options: docOptions, Pauseless: true,
			CNIBinDir: "/usr/lib/cni", CNIConfDir: "/etc/cni/net.d"}),
		"cri-config-1": func(t *testing.T, b docBlock) {
			checkSame(t, b, harness.CRIConfig(1, harness.CRISettings{Options: docOptions, OptionsFile: docOptionsPath}))
			checkContainerdLoads(t, b, 1, b.text)
		},
		"cri-config-userns": func(t *testing.T, b docBlock) {
			// The handler's table alone: what the handler adds to the configuration.
			h := harness.Handler{Name: "tether-userns", Type: "io.containerd.runc.v2", Path: "/usr/local/bin/containerd-shim-tether-v2",
				Options: "BinaryName = \"/var/cache/tether/runc-v1.5.2/runc\"\nRoot = \"/run/containerd/runc\"\nSystemdCgroup = false"}
			base := harness.CRIConfig(2, harness.CRISettings{Options: docOptions})
			full := harness.CRIConfig(2, harness.CRISettings{Options: docOptions, Handlers: []harness.Handler{h}})
			checkSame(t, b, strings.TrimPrefix(full, base))
			checkContainerdLoads(t, b, 2, b.text)
		},
		// A node's configuration (kubernetes-systemd.md): what the CRI tests
		// run with (harness.NodeOptions), without the tests' own lines.
		"cri-config-2-systemd": criConfig2(harness.CRISettings{ForNode: true, Options: docNodeOptions(harness.Systemd)}),
		"cri-config-2-node":    criConfig2(harness.CRISettings{ForNode: true, Options: docNodeOptions(harness.Cgroupfs)}),
		"cri-config-1-node": func(t *testing.T, b docBlock) {
			checkSame(t, b, harness.CRIConfig(1, harness.CRISettings{ForNode: true, OptionsFile: docOptionsPath}))
			checkContainerdLoads(t, b, 1, b.text)
		},
		"cri-options-file-systemd": func(t *testing.T, b docBlock) {
			checkSame(t, b, "# "+docOptionsPath+"\n"+docNodeOptions(harness.Systemd))
			checkOptionsFile(t, b)
		},
		"vm-guest-commands": checkVMGuestCommands,
		"upgrade-commands":  checkUpgradeCommands,
		"upgrade-output":    checkUpgradeOutput,
		"go-test-run":       checkGoTestRun,
		"deb-commands":      checkDebCommands,
	}
}

// checkSame fails unless the block is want, byte for byte.
func checkSame(t *testing.T, b docBlock, want string) {
	t.Helper()
	if b.text != want {
		t.Errorf("%s:%d differs from what the tests generate:\n--- documented\n%s--- generated\n%s", b.page, b.line, b.text, want)
	}
}

// containerdBinary is the containerd of the generation (1 or 2): Debian's
// on PATH, or the 2.x build the suite runs against (TETHER_CONTAINERD_DIR)
// or make containerd2 left in the cache.
func containerdBinary(t *testing.T, major int) string {
	t.Helper()
	if suite.ctd.Major == major {
		return suite.ctd.ContainerdBinary
	}
	if major == 1 {
		return "containerd"
	}
	bin := "/var/cache/tether/containerd-v2.4.2/containerd"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("SKIPPED here: no containerd 2.x (make containerd2 builds %s); checked when the suite runs against 2.x", bin)
	}
	return bin
}

// checkContainerdLoads has the real containerd of the generation load the
// configuration (config dump) and checks that every key the block sets is
// in what it loaded, with the block's value: a key it does not know is
// dropped (1.x) or refused.
func checkContainerdLoads(t *testing.T, b docBlock, major int, config string) {
	t.Helper()
	setup(t)
	bin := containerdBinary(t, major)
	version := map[int]int{1: 2, 2: 3}[major]
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf("version = %d\n%s", version, config)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", path, "config", "dump")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s:%d: %s config dump: %v\n%s", b.page, b.line, bin, err, stderr.String())
	}
	if strings.Contains(stderr.String(), "unknown key") || strings.Contains(stderr.String(), "level=error") {
		t.Errorf("%s:%d: %s complains:\n%s", b.page, b.line, bin, stderr.String())
	}
	var want, got map[string]any
	if err := toml.Unmarshal([]byte(config), &want); err != nil {
		t.Fatalf("%s:%d: not TOML: %v", b.page, b.line, err)
	}
	if err := toml.Unmarshal(out, &got); err != nil {
		t.Fatalf("%s config dump: %v", bin, err)
	}
	for _, key := range leafKeys(want, nil) {
		w, g := lookup(want, key), lookup(got, key)
		if !reflect.DeepEqual(w, g) {
			t.Errorf("%s:%d: %s: containerd %d.x loaded %v, the page says %v", b.page, b.line, strings.Join(key, "."), major, g, w)
		}
	}
}

func leafKeys(m map[string]any, prefix []string) [][]string {
	var keys [][]string
	for k, v := range m {
		key := append(append([]string{}, prefix...), k)
		if sub, ok := v.(map[string]any); ok {
			keys = append(keys, leafKeys(sub, key)...)
		} else {
			keys = append(keys, key)
		}
	}
	return keys
}

func lookup(m map[string]any, key []string) any {
	var v any = m
	for _, k := range key {
		sub, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = sub[k]
	}
	return v
}

// checkOptionsFile parses the block as tether's options file, the way the
// shim reads the ConfigPath containerd's CRI passes.
func checkOptionsFile(t *testing.T, b docBlock) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tether.toml")
	if err := os.WriteFile(path, []byte(b.text), 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := anypb.New(&runtimeoptions.Options{ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oci.ParseOptions(a); err != nil {
		t.Errorf("%s:%d: tether refuses the options: %v", b.page, b.line, err)
	}
}

// docCommands are the block's commands: comments dropped, continued lines
// joined.
func docCommands(b docBlock) [][]string {
	var cmds [][]string
	joined := strings.ReplaceAll(b.text, "\\\n", " ")
	for _, line := range strings.Split(joined, "\n") {
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		if f := strings.Fields(line); len(f) > 0 {
			cmds = append(cmds, f)
		}
	}
	return cmds
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

// repoMentions reports whether any Go file of the repository holds s.
func repoMentions(t *testing.T, root, s string) bool {
	t.Helper()
	out, err := exec.Command("git", "-C", root, "grep", "--untracked", "-lF", s, "--", "*.go").Output()
	if err != nil && len(out) == 0 {
		return false
	}
	return len(out) > 0
}

// checkDocNames checks the prose: every test a page names in backquotes
// exists, every file of this repository it names (a path with an
// extension in a directory the repository has) exists, and every relative
// link leads to a file (or a page other work is adding).
func checkDocNames(t *testing.T, root string, pages []string) {
	code := regexp.MustCompile("`([^`\n]+)`")
	link := regexp.MustCompile(`\]\(([^)#]+)(#[^)]*)?\)`)
	for _, p := range pages {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		for _, m := range code.FindAllStringSubmatch(string(data), -1) {
			word := m[1]
			switch {
			case regexp.MustCompile(`^Test[A-Z]\w+$`).MatchString(word):
				if !repoMentions(t, root, word) {
					t.Errorf("%s: test %s does not exist", rel, word)
				}
			case regexp.MustCompile(`^[\w.-]+(/[\w.-]+)*/[\w-]+\.[a-z]+$`).MatchString(word):
				if _, err := os.Stat(filepath.Join(root, filepath.Dir(word))); err != nil {
					continue // another project's file (containerd's)
				}
				if _, err := os.Stat(filepath.Join(root, word)); err != nil {
					t.Errorf("%s: %s does not exist", rel, word)
				}
			}
		}
		for _, m := range link.FindAllStringSubmatch(string(data), -1) {
			target := m[1]
			if strings.Contains(target, "://") {
				continue
			}
			path := filepath.Join(filepath.Dir(p), target)
			relTarget, _ := filepath.Rel(root, path)
			if _, err := os.Stat(path); err != nil && !docPendingPages[relTarget] {
				t.Errorf("%s: link to %s: %v", rel, target, err)
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
