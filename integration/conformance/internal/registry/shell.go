package registry

import (
	"debug/elf"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// shellLayer puts a dynamically linked busybox at bin/sh, with its ELF
// interpreter and the libraries it needs (and theirs) at the paths the
// host's loader has them, each a regular file. Debian's busybox-static
// runs its applets itself (FEATURE_SH_STANDALONE), so its sh finds `ls`
// even where /bin/ls is masked; Debian's dynamically linked busybox looks
// commands up in PATH, as the official image's does, and answers
// "/bin/sh: ls: Permission denied" for critest's MaskedPaths.
func shellLayer(busybox string) ([]entry, error) {
	interp, err := interpreter(busybox)
	if err != nil {
		return nil, err
	}
	resolved, err := filepath.EvalSymlinks(interp)
	if err != nil {
		return nil, fmt.Errorf("the shell's interpreter: %w", err)
	}
	// The loader's own directory (the multiarch one on Debian) first.
	search := []string{filepath.Dir(resolved), filepath.Dir(interp), "/lib", "/usr/lib"}
	files := map[string]string{"/bin/sh": busybox, interp: resolved} // path in the image -> host file
	pending := []string{busybox}
	for len(pending) > 0 {
		f, err := elf.Open(pending[0])
		if err != nil {
			return nil, fmt.Errorf("the shell's libraries: %w", err)
		}
		needed, err := f.ImportedLibraries()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("the shell's libraries: %s: %w", pending[0], err)
		}
		pending = pending[1:]
		for _, lib := range needed {
			path, host, err := findLibrary(lib, search)
			if err != nil {
				return nil, err
			}
			if _, ok := files[path]; !ok {
				files[path] = host
				pending = append(pending, host)
			}
		}
	}
	var es []entry
	dirs := map[string]bool{}
	// In order: the same layer (and digest) every run.
	for _, path := range slices.Sorted(maps.Keys(files)) {
		host := files[path]
		data, err := os.ReadFile(host)
		if err != nil {
			return nil, fmt.Errorf("the shell's files: %w", err)
		}
		name := strings.TrimPrefix(path, "/")
		var parents []entry // parents first
		for d := filepath.Dir(name); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			parents = append([]entry{dir(d+"/", 0o755)}, parents...)
		}
		es = append(append(es, parents...), file(name, 0o755, string(data)))
	}
	return es, nil
}

// interpreter is the ELF interpreter (PT_INTERP) of a dynamically linked
// executable.
func interpreter(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("the shell: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				return "", fmt.Errorf("the shell's interpreter: %w", err)
			}
			return strings.TrimRight(string(b), "\x00"), nil
		}
	}
	return "", fmt.Errorf("%s is statically linked: the shell is busybox's dynamically linked build (make busybox-sh)", path)
}

// findLibrary finds a library by its soname in the directories, returning
// where it goes in the image (the directory it was found in) and the host
// file it is (links resolved).
func findLibrary(name string, dirs []string) (string, string, error) {
	for _, d := range dirs {
		path := filepath.Join(d, name)
		if host, err := filepath.EvalSymlinks(path); err == nil {
			return path, host, nil
		}
	}
	return "", "", fmt.Errorf("the shell's library %s is in none of %v", name, dirs)
}
