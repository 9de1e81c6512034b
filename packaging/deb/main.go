// Command deb builds tether's Debian binary package from this tree with
// Debian's own dpkg-deb: the shim where containerd finds it
// (/usr/bin/containerd-shim-tether-v2), the documentation and the
// containerd configuration snippets of docs/ as examples
// (/usr/share/doc/tether), /etc/default/tether (a conffile) and the
// maintainer scripts of this directory (postinst moves running shims onto
// the new binary). `make deb` runs it on the binary it built.
//
// Why dpkg-deb and not dpkg-buildpackage: the binary is built with the Go
// toolchain the project pins, not Debian's golang package, so a source
// package's Build-Depends could not be met from the archive; a static Go
// binary has no shared-library dependencies for dpkg-shlibdeps to find.
// What debhelper would add is done here: control, md5sums, conffiles, the
// changelog and copyright, compressed documentation, root ownership.
package main

import (
	"bytes"
	"compress/gzip"
	"crypto/md5"
	_ "embed"
	"encoding/hex"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/tether-shim/tether/internal/docblocks"
)

var (
	//go:embed postinst
	postinst []byte
	//go:embed prerm
	prerm []byte
	//go:embed default
	etcDefault []byte
)

const (
	pkg        = "tether"
	maintainer = "tether developers <root@localhost>"
	docDir     = "usr/share/doc/" + pkg
)

func main() {
	binary := flag.String("binary", "bin/containerd-shim-tether-v2", "the shim binary to package")
	version := flag.String("version", "", "the package version (Debian syntax, native: no revision)")
	root := flag.String("root", ".", "the source tree (README.md, docs/)")
	out := flag.String("out", "bin", "where the .deb goes")
	flag.Parse()
	path, err := build(*binary, *version, *root, *out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "deb:", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

// validVersion is a native Debian version: no hyphen (no revision).
var validVersion = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`)

// debArch is the Debian architecture of the Go one the binary was built for.
func debArch() (string, error) {
	switch runtime.GOARCH {
	case "amd64", "arm64", "s390x", "riscv64":
		return runtime.GOARCH, nil
	case "arm":
		return "armhf", nil
	case "386":
		return "i386", nil
	case "ppc64le":
		return "ppc64el", nil
	}
	return "", fmt.Errorf("no Debian architecture for %s", runtime.GOARCH)
}

// build stages the package's tree and has dpkg-deb build it.
func build(binary, version, root, out string) (string, error) {
	if !validVersion.MatchString(version) {
		return "", fmt.Errorf("version %q is not a native Debian version", version)
	}
	arch, err := debArch()
	if err != nil {
		return "", err
	}
	stage, err := os.MkdirTemp(out, "deb-stage-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o755); err != nil { // the package's "./"
		return "", err
	}
	files := newTree(stage)
	bin, err := os.ReadFile(binary)
	if err != nil {
		return "", err
	}
	files.add("usr/bin/containerd-shim-tether-v2", bin, 0o755)
	files.add("etc/default/"+pkg, etcDefault, 0o644)
	if err := addDocs(files, root, version); err != nil {
		return "", err
	}
	control := fmt.Sprintf(`Package: %s
Version: %s
Architecture: %s
Maintainer: %s
Installed-Size: %d
Recommends: containerd, runc | crun
Section: admin
Priority: optional
Description: containerd shim v2 for Linux containers
 tether is a containerd shim v2 (runtime io.containerd.tether.v2) that
 drives runc or crun and serves containerd's task API over ttrpc, for
 containerd 1.6/1.7 and 2.x. It runs Kubernetes pods without a pause
 container (containerd 2.x's sandbox API) and upgrades itself in place
 under running containers: on an upgrade of this package, the running
 shims of the node's containerd move onto the new binary
 (/etc/default/tether says which).
`, pkg, version, arch, maintainer, files.installedKiB())
	debian := map[string][]byte{
		"control":   []byte(control),
		"md5sums":   files.md5sums(),
		"conffiles": []byte("/etc/default/" + pkg + "\n"),
		"postinst":  postinst,
		"prerm":     prerm,
	}
	for name, data := range debian {
		mode := os.FileMode(0o644)
		if name == "postinst" || name == "prerm" {
			mode = 0o755
		}
		if err := files.write(filepath.Join("DEBIAN", name), data, mode); err != nil {
			return "", err
		}
	}
	deb := filepath.Join(out, fmt.Sprintf("%s_%s_%s.deb", pkg, version, arch))
	cmd := exec.Command("dpkg-deb", "--root-owner-group", "-Zxz", "--build", stage, deb)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg-deb: %v\n%s", err, b)
	}
	return deb, nil
}

// examples are the documentation's blocks shipped as files: the check that
// names the block, the file, and the line put before it.
var examples = []struct{ check, name, head string }{
	{"cri-config-1", "containerd-1.x-config.toml", "version = 2\n"},
	{"cri-options-file", "tether.toml", ""},
	{"options-crun", "tether-crun.toml", ""},
	{"cri-config-2", "containerd-2.x-config.toml", "version = 3\n"},
	{"cri-config-pauseless", "containerd-2.x-pauseless.toml", "version = 3\n"},
	{"cri-config-userns", "containerd-2.x-userns-handler.toml", ""},
	{"runtimeclass-pod", "runtimeclass.yaml", ""},
}

// addDocs adds README.md and docs/*.md (compressed, as Debian policy wants
// for documentation over 4 KiB), the examples, copyright and changelog.
func addDocs(files *tree, root, version string) error {
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		return err
	}
	pages = append([]string{filepath.Join(root, "README.md")}, pages...)
	blocks := map[string]docblocks.Block{}
	for _, p := range pages {
		rel, _ := filepath.Rel(root, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files.addDoc(filepath.Join(docDir, rel), data)
		read, err := docblocks.Read(p, rel)
		if err != nil {
			return err
		}
		for _, b := range read {
			if _, ok := blocks[b.Check]; !ok {
				blocks[b.Check] = b
			}
		}
	}
	for _, e := range examples {
		b, ok := blocks[e.check]
		if !ok {
			return fmt.Errorf("no block of the documentation has the check %s", e.check)
		}
		text := fmt.Sprintf("# From %s (TestDocs checks it against the code).\n%s%s", b.Page, e.head, b.Text)
		files.add(filepath.Join(docDir, "examples", e.name), []byte(text), 0o644)
	}
	files.add(filepath.Join(docDir, "copyright"), []byte(`Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tether
Source: the tether source tree this package was built from

Files: *
Copyright: the tether authors
License: unstated
 The source tree states no license.
`), 0o644)
	changelog := fmt.Sprintf("%s (%s) unstable; urgency=medium\n\n  * Built from the tether source tree.\n\n -- %s  %s\n",
		pkg, version, maintainer, time.Now().UTC().Format(time.RFC1123Z))
	files.add(filepath.Join(docDir, "changelog.gz"), gzipped([]byte(changelog)), 0o644)
	return files.err
}

// tree is the package's files as staged, remembered for md5sums.
type tree struct {
	root  string
	sums  map[string]string
	bytes map[string]int64
	err   error
}

func newTree(root string) *tree {
	return &tree{root: root, sums: map[string]string{}, bytes: map[string]int64{}}
}

func (t *tree) write(rel string, data []byte, mode os.FileMode) error {
	path := filepath.Join(t.root, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		return err
	}
	return os.Chmod(path, mode) // whatever the umask
}

// add stages a file of the package.
func (t *tree) add(rel string, data []byte, mode os.FileMode) {
	if t.err != nil {
		return
	}
	if t.err = t.write(rel, data, mode); t.err != nil {
		return
	}
	sum := md5.Sum(data)
	t.sums[rel], t.bytes[rel] = hex.EncodeToString(sum[:]), int64(len(data))
}

// addDoc stages documentation, compressed when over 4 KiB.
func (t *tree) addDoc(rel string, data []byte) {
	if len(data) > 4096 {
		rel, data = rel+".gz", gzipped(data)
	}
	t.add(rel, data, 0o644)
}

// md5sums is DEBIAN/md5sums: every file but the conffiles.
func (t *tree) md5sums() []byte {
	var names []string
	for rel := range t.sums {
		if !strings.HasPrefix(rel, "etc/") {
			names = append(names, rel)
		}
	}
	sort.Strings(names)
	var b bytes.Buffer
	for _, rel := range names {
		fmt.Fprintf(&b, "%s  %s\n", t.sums[rel], rel)
	}
	return b.Bytes()
}

// installedKiB is Installed-Size: each file rounded up to a KiB, and one
// per directory, as dpkg-gencontrol counts.
func (t *tree) installedKiB() int64 {
	var kib int64
	filepath.WalkDir(t.root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && path != t.root {
			kib++
		}
		return nil
	})
	for _, n := range t.bytes {
		kib += (n + 1023) / 1024
	}
	return kib
}

// gzipped is data compressed with gzip -9n: no name, no time.
func gzipped(data []byte) []byte {
	var b bytes.Buffer
	w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	w.Write(data)
	w.Close()
	return b.Bytes()
}
