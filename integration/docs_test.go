package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/internal/docblocks"
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
