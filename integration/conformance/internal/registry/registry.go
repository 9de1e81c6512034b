// Package registry is an offline stand-in for the public registries that
// containerd's client tests pull from (ghcr.io, k8s.gcr.io, registry.k8s.io).
//
// It is an HTTP proxy on a loopback address. A process pointed at it with
// HTTPS_PROXY, trusting its throwaway CA (SSL_CERT_FILE), has every CONNECT
// answered here, never forwarded: the TLS session ends in this process with a
// certificate made for the requested host, and a read-only registry (the
// distribution API's /v2/ manifests and blobs) serves images with the
// upstream names and shapes, built at start from Debian's busybox-static.
// The two schema-1 images containerd 1.6 pulls by digest cannot be made, nor
// any other image pinned by upstream's digest.
package registry

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

type blob struct {
	data      []byte
	mediaType string
}

// store is what the registry serves; it is not changed after build.
type store struct {
	blobs map[string]blob              // digest -> content
	tags  map[string]map[string]string // "host/repo" -> tag -> digest
}

// Registry is a running stand-in.
type Registry struct {
	// BusyboxDigest is the digest of the busybox image's index, for
	// containerd 2.x's BusyBoxByDigest (upstream's cannot be made).
	BusyboxDigest string
	// CA is the PEM certificate that signs every host's certificate.
	CA []byte

	store    store
	log      *slog.Logger
	ln       net.Listener
	tunnels  chan net.Conn
	done     chan struct{}
	mu       sync.Mutex
	caCert   *x509.Certificate
	caKey    *ecdsa.PrivateKey
	leaves   map[string]*tls.Certificate
	servers  []*http.Server
	stopOnce sync.Once
}

// Options are what a registry is made of.
type Options struct {
	Busybox string       // a static busybox, the images' programs
	Tools   []byte       // the static imagetools binary: pause, nginx, nnp, stress
	Listen  net.Listener // where the proxy listens (a loopback address); Close closes it
	Log     *slog.Logger // every request is logged here
}

// Start builds the images and starts the proxy.
func Start(o Options) (*Registry, error) {
	log, ln := o.Log, o.Listen
	r := &Registry{
		store:   store{blobs: map[string]blob{}, tags: map[string]map[string]string{}},
		log:     log,
		tunnels: make(chan net.Conn),
		done:    make(chan struct{}),
		leaves:  map[string]*tls.Certificate{},
		ln:      ln,
	}
	var err error
	if r.BusyboxDigest, err = build(&r.store, o.Busybox, o.Tools); err != nil {
		return nil, fmt.Errorf("build images: %w", err)
	}
	if err := r.newCA(); err != nil {
		return nil, fmt.Errorf("make CA: %w", err)
	}
	registry := &http.Server{Handler: http.HandlerFunc(r.serveRegistry), ReadHeaderTimeout: 30 * time.Second}
	proxy := &http.Server{Handler: http.HandlerFunc(r.serveConnect), ReadHeaderTimeout: 30 * time.Second}
	r.servers = []*http.Server{registry, proxy}
	tlsConfig := &tls.Config{NextProtos: []string{"http/1.1"}, GetCertificate: r.certificate}
	go registry.Serve(tls.NewListener(tunnelListener{r}, tlsConfig))
	go proxy.Serve(r.ln)
	log.Info("registry stand-in started", "proxy", r.ln.Addr(), "blobs", len(r.store.blobs))
	return r, nil
}

// Addr is the proxy's address (host:port).
func (r *Registry) Addr() string { return r.ln.Addr().String() }

// Close stops serving.
func (r *Registry) Close() {
	r.stopOnce.Do(func() {
		close(r.done)
		for _, s := range r.servers {
			s.Close()
		}
	})
}

// serveConnect takes over each CONNECT's connection and hands it to the
// registry, behind TLS; nothing is forwarded.
func (r *Registry) serveConnect(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodConnect {
		r.log.Info("refused a non-CONNECT proxy request", "method", req.Method, "url", req.URL.String())
		http.Error(w, "only CONNECT is served", http.StatusForbidden)
		return
	}
	r.log.Info("CONNECT (answered here)", "host", req.Host)
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "cannot take over the connection", http.StatusInternalServerError)
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return
	}
	if buf.Reader.Buffered() > 0 { // the client spoke before the tunnel was up
		conn.Close()
		return
	}
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		conn.Close()
		return
	}
	select {
	case r.tunnels <- conn:
	case <-r.done:
		conn.Close()
	}
}

// tunnelListener hands the registry's server the CONNECT tunnels.
type tunnelListener struct{ r *Registry }

func (l tunnelListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.r.tunnels:
		return c, nil
	case <-l.r.done:
		return nil, net.ErrClosed
	}
}

func (l tunnelListener) Close() error   { return nil }
func (l tunnelListener) Addr() net.Addr { return l.r.ln.Addr() }

func registryError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`+"\n", code, msg)
}

// serveRegistry answers the read-only part of the distribution API.
func (r *Registry) serveRegistry(w http.ResponseWriter, req *http.Request) {
	host := req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	r.log.Info("request", "method", req.Method, "host", host, "path", req.URL.Path)
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		registryError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "read-only registry")
		return
	}
	path := req.URL.Path
	if path == "/v2/" || path == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{}"))
		return
	}
	var repo, kind, ref string
	rest, ok := strings.CutPrefix(path, "/v2/")
	for _, k := range []string{"/manifests/", "/blobs/"} {
		if i := strings.LastIndex(rest, k); ok && i > 0 {
			repo, kind, ref = host+"/"+rest[:i], strings.Trim(k, "/"), rest[i+len(k):]
			break
		}
	}
	tags, known := r.store.tags[repo]
	if !known {
		registryError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository "+repo+" not known")
		return
	}
	dgst := ref
	if kind == "manifests" && !strings.HasPrefix(ref, "sha256:") {
		dgst = tags[ref]
	}
	b, ok := r.store.blobs[dgst]
	if !ok || (kind == "manifests" && !strings.Contains(b.mediaType, "manifest")) {
		code := map[string]string{"manifests": "MANIFEST_UNKNOWN", "blobs": "BLOB_UNKNOWN"}[kind]
		registryError(w, http.StatusNotFound, code, kind+" "+ref+" not known in "+repo)
		return
	}
	w.Header().Set("Docker-Content-Digest", dgst)
	w.Header().Set("Etag", `"`+dgst+`"`)
	w.Header().Set("Content-Type", "application/octet-stream")
	if kind == "manifests" {
		w.Header().Set("Content-Type", b.mediaType)
	}
	http.ServeContent(w, req, "", epoch, bytes.NewReader(b.data))
}

// newCA makes the throwaway CA, valid for two days.
func (r *Registry) newCA() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tether conformance throwaway registry CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	if r.caCert, err = x509.ParseCertificate(der); err != nil {
		return err
	}
	r.caKey = key
	r.CA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return nil
}

// certificate makes (once per host) a certificate for the host a client
// asked for.
func (r *Registry) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	host := hello.ServerName
	if host == "" {
		host = "127.0.0.1"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.leaves[host]; ok {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(47 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.caCert, &key.PublicKey, r.caKey)
	if err != nil {
		return nil, err
	}
	c := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	r.leaves[host] = c
	return c, nil
}
