package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

const (
	mediaList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mediaConfig   = "application/vnd.docker.container.image.v1+json"
	mediaLayer    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// epoch is every file's and image's time, so images are the same each run.
var epoch = time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)

// The official busybox image's users and groups: tests run as uid 3 and
// look users up by name.
const passwd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
`

const group = `root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
`

// ncWrapper stands in for /bin/nc: Debian's busybox nc ignores SIGTERM as a
// container's PID 1, the official image's dies of it with status 143 (which
// TestBindLowPortNonOpt waits for).
const ncWrapper = `#!/bin/sh
# busybox nc that exits 143 on SIGTERM even as PID 1, like the official image's
/bin/busybox nc "$@" &
child=$!
trap 'kill -TERM $child 2>/dev/null; exit 143' TERM
trap 'kill -INT $child 2>/dev/null; exit 130' INT
wait $child
`

// entry is one file, directory or symlink of a layer.
type entry struct {
	tar.Header
	data []byte
}

func dir(name string, mode int64) entry {
	return entry{Header: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: mode}}
}

func file(name string, mode int64, data string) entry {
	return entry{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data))}, data: []byte(data)}
}

func symlink(name, target string) entry {
	return entry{Header: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}}
}

// hardlink is a hard link to target, a path of the same layer.
func hardlink(name, target string) entry {
	return entry{Header: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target, Mode: 0o755}}
}

func owned(e entry, uid, gid int) entry {
	e.Uid, e.Gid = uid, gid
	return e
}

// busyboxRootfs is the official busybox image's layout: harness's busybox
// layer with that image's users and groups, nc wrapper and directories.
func busyboxRootfs(busybox string) ([]entry, error) {
	base, err := harness.BusyboxLayer(busybox)
	if err != nil {
		return nil, err
	}
	replaced := map[string]bool{"etc/passwd": true, "etc/group": true, "bin/nc": true}
	var es []entry
	tr := tar.NewReader(bytes.NewReader(base))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read busybox layer: %w", err)
		}
		if replaced[h.Name] {
			continue
		}
		// The official image's applets are hard links to busybox: a path
		// masked by a bind mount (runc's maskedPaths on /bin/ls) hides the
		// applet, not busybox itself, as a symlink would.
		if h.Typeflag == tar.TypeSymlink && h.Linkname == "busybox" && strings.HasPrefix(h.Name, "bin/") {
			h.Typeflag, h.Linkname, h.Mode = tar.TypeLink, "bin/busybox", 0o755
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("read busybox layer: %w", err)
		}
		es = append(es, entry{Header: *h, data: data})
	}
	es = append(es,
		file("bin/nc", 0o755, ncWrapper),
		file("etc/passwd", 0o644, passwd), file("etc/group", 0o644, group),
		file("etc/shadow", 0o600, "root:*:10933:0:99999:7:::\n"),
		file("etc/hosts", 0o644, "127.0.0.1\tlocalhost\n"), file("etc/resolv.conf", 0o644, ""),
		dir("home/", 0o755), dir("sbin/", 0o755), dir("usr/", 0o755), dir("usr/bin/", 0o755), dir("usr/sbin/", 0o755),
		dir("var/spool/", 0o755), dir("var/spool/mail/", 0o755), dir("var/www/", 0o755),
	)
	return es, nil
}

// filler is n bytes that gzip cannot shrink, the same every run.
func filler(n int) string {
	var b strings.Builder
	b.Grow(n)
	block := sha256.Sum256([]byte("tether conformance filler"))
	for b.Len() < n {
		block = sha256.Sum256(block[:])
		b.Write(block[:])
	}
	return b.String()[:n]
}

// layer is the gzipped tar of es and its diff ID (the uncompressed digest).
func layer(es []entry) ([]byte, string, error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, e := range es {
		h := e.Header
		h.ModTime, h.Format = epoch, tar.FormatPAX
		h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
		if err := tw.WriteHeader(&h); err != nil {
			return nil, "", err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, "", err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if err != nil {
		return nil, "", err
	}
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gz.Bytes(), digest(raw.Bytes()), nil
}

func digest(b []byte) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256(b))
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Variant      string `json:"variant,omitempty"`
}

type descriptor struct {
	MediaType string    `json:"mediaType"`
	Digest    string    `json:"digest"`
	Size      int       `json:"size"`
	Platform  *platform `json:"platform,omitempty"`
}

// imageConfig is the part of an image's config the tests read.
type imageConfig struct {
	Cmd        []string            `json:",omitempty"`
	Entrypoint []string            `json:",omitempty"`
	Env        []string            `json:",omitempty"`
	Volumes    map[string]struct{} `json:",omitempty"`
	WorkingDir string              `json:",omitempty"`
	User       string              `json:",omitempty"`
	Labels     map[string]string   `json:",omitempty"`
}

// others are the platforms every index lists besides linux/amd64, each with
// a small never-run image of its own (tests pull all or some platforms).
var others = []platform{
	{Architecture: "arm", OS: "linux", Variant: "v7"},
	{Architecture: "arm64", OS: "linux", Variant: "v8"},
	{Architecture: "ppc64le", OS: "linux"},
	{Architecture: "s390x", OS: "linux"},
}

// builder puts images' blobs into a store.
type builder struct{ s *store }

func (b builder) put(mediaType string, data []byte) descriptor {
	d := descriptor{MediaType: mediaType, Digest: digest(data), Size: len(data)}
	b.s.blobs[d.Digest] = blob{data: data, mediaType: mediaType}
	return d
}

func (b builder) putJSON(mediaType string, v any) (descriptor, error) {
	data, err := json.MarshalIndent(v, "", "   ")
	if err != nil {
		return descriptor{}, err
	}
	return b.put(mediaType, data), nil
}

// image stores one platform's image of the given layers.
func (b builder) image(p platform, cfg imageConfig, layers ...[]entry) (descriptor, error) {
	var descs []descriptor
	var diffIDs []string
	var history []map[string]string
	for i, es := range layers {
		gz, diffID, err := layer(es)
		if err != nil {
			return descriptor{}, err
		}
		descs = append(descs, b.put(mediaLayer, gz))
		diffIDs = append(diffIDs, diffID)
		history = append(history, map[string]string{"created": epoch.Format(time.RFC3339), "created_by": fmt.Sprintf("layer %d", i)})
	}
	c := map[string]any{
		"architecture": p.Architecture, "os": p.OS,
		"created": epoch.Format(time.RFC3339), "config": cfg, "history": history,
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	}
	if p.Variant != "" {
		c["variant"] = p.Variant
	}
	config, err := b.putJSON(mediaConfig, c)
	if err != nil {
		return descriptor{}, err
	}
	d, err := b.putJSON(mediaManifest, map[string]any{
		"schemaVersion": 2, "mediaType": mediaManifest, "config": config, "layers": descs,
	})
	d.Platform = &p
	return d, err
}

// index stores a multi-platform image, the real one for linux/amd64, and
// tags it as every one of refs ("host/repo:tag"). It returns its digest.
func (b builder) index(name string, cfg imageConfig, layers [][]entry, refs ...string) (string, error) {
	amd64, err := b.image(platform{Architecture: "amd64", OS: "linux"}, cfg, layers...)
	if err != nil {
		return "", err
	}
	manifests := []descriptor{amd64}
	for _, p := range others {
		stub := []entry{dir("etc/", 0o755), file("etc/platform", 0o644, name+" "+p.OS+"/"+p.Architecture+p.Variant+"\n"+strings.Repeat("x", 4096)+"\n")}
		d, err := b.image(p, cfg, stub)
		if err != nil {
			return "", err
		}
		manifests = append(manifests, d)
	}
	d, err := b.putJSON(mediaList, map[string]any{"schemaVersion": 2, "mediaType": mediaList, "manifests": manifests})
	if err != nil {
		return "", err
	}
	for _, ref := range refs {
		repo, tag, _ := strings.Cut(ref, ":")
		if b.s.tags[repo] == nil {
			b.s.tags[repo] = map[string]string{}
		}
		b.s.tags[repo][tag] = d.Digest
	}
	return d.Digest, nil
}

// imageSpec is one multi-platform image and the references it is served as.
type imageSpec struct {
	name   string
	cfg    imageConfig
	layers [][]entry
	refs   []string
}

// build makes every image the suites pull (containerd 1.6 and 2.x, the CRI
// suites) and returns the digest of the busybox index. tools is the static
// imagetools binary (pause, nginx, nnp, stress).
func build(s *store, busybox string, tools []byte) (string, error) {
	b := builder{s}
	rootfs, err := busyboxRootfs(busybox)
	if err != nil {
		return "", err
	}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	sh := imageConfig{Cmd: []string{"sh"}, Env: env}
	testDir := []entry{dir("test_dir/", 0o755), file("test_dir/test_file", 0o644, "test_content\n")}
	images := []imageSpec{
		{"busybox", sh, [][]entry{rootfs}, []string{"ghcr.io/containerd/busybox:1.32", "ghcr.io/containerd/busybox:1.36"}},
		// critest's container image: the official busybox has ipcs and
		// pgrep, Debian's has not.
		{"e2e-busybox", sh, [][]entry{rootfs, {file("usr/bin/ipcs", 0o755, string(tools)), hardlink("usr/bin/pgrep", "usr/bin/ipcs")}},
			[]string{"registry.k8s.io/e2e-test-images/busybox:1.29-2"}},
		// Only ever run as `sh -c "exit 7"`, also on a read-only rootfs
		// (1.6's TestUserNamespaces/ReadonlyRootFS): runc mounts a tmpfs on
		// /run and cannot make the directory there, so the image has it,
		// as alpine's has. (That test passes without it only when it
		// reuses the writable subtest's remapped snapshot before
		// containerd's garbage collector removed it.)
		// The CRI suite's image-volume tests read its /etc/os-release and
		// expect /bin/sh to be alpine's absolute link to /bin/busybox.
		{"alpine", imageConfig{Cmd: []string{"/bin/sh"}, Env: env}, [][]entry{rootfs, {dir("run/", 0o755),
			symlink("bin/sh", "/bin/busybox"),
			file("etc/os-release", 0o644, "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.14.0\nPRETTY_NAME=\"Alpine Linux v3.14\"\n")}},
			[]string{"ghcr.io/containerd/alpine:3.14.0"}},
		{"volume-copy-up", imageConfig{Cmd: []string{"sh"}, Env: env, Volumes: map[string]struct{}{"/test_dir": {}}},
			[][]entry{rootfs, testDir}, []string{"ghcr.io/containerd/volume-copy-up:2.1"}},
		// 2.2 adds two volumes with odd names, a layer each.
		{"volume-copy-up-2.2", imageConfig{Cmd: []string{"sh"}, Env: env,
			Volumes: map[string]struct{}{"/test_dir": {}, "C:/weird_test_dir": {}, "/:colon_prefixed": {}}},
			[][]entry{rootfs, testDir,
				{dir("C:/", 0o755), dir("C:/weird_test_dir/", 0o755), file("C:/weird_test_dir/weird_test_file", 0o644, "test_content\n")},
				{dir(":colon_prefixed/", 0o755), file(":colon_prefixed/colon_prefixed_file", 0o644, "test_content\n")}},
			[]string{"ghcr.io/containerd/volume-copy-up:2.2"}},
		// Upstream is ubuntu; the user-namespace tests run
		// `bash -c "[ -u /usr/bin/passwd ] && exit 7"` as uid 34.
		{"volume-ownership", imageConfig{Cmd: []string{"sh"}, Env: env, Volumes: map[string]struct{}{"/test_dir": {}}},
			[][]entry{rootfs, {
				file("etc/passwd", 0o644, passwd+"backup:x:34:34:backup:/var/backups:/usr/sbin/nologin\n"),
				file("usr/bin/bash", 0o755, "#!/bin/sh\nexec /bin/sh \"$@\"\n"),
				file("usr/bin/passwd", 0o4755, "#!/bin/sh\n# a set-uid file for the tests' [ -u ] check\nexit 1\n"),
				owned(dir("test_dir/", 0o755), 65534, 65534),
				dir("run/", 0o755), // a read-only rootfs needs it for the /run tmpfs
				// containerd 2.x's TestCRIImagePullTimeout counts on "one
				// layer > 3MB" (ubuntu's): 4 MiB that do not compress.
				file("usr/share/filler", 0o644, filler(4<<20)),
			}}, []string{"ghcr.io/containerd/volume-ownership:2.1"}},
	}
	images = append(images, criImages(rootfs, tools, env)...)
	var busyboxDigest string
	for _, img := range images {
		d, err := b.index(img.name, img.cfg, img.layers, img.refs...)
		if err != nil {
			return "", fmt.Errorf("image %s: %w", img.name, err)
		}
		if img.name == "busybox" {
			busyboxDigest = d
		}
	}
	return busyboxDigest, nil
}
