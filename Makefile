# tether — containerd shim v2 ("io.containerd.tether.v2").

# Go lives in /usr/local/go on a fresh machine; sudo may drop it from PATH.
export PATH := $(PATH):/usr/local/go/bin
GO          ?= go
PREFIX      ?= /usr/local
BINARY      := containerd-shim-tether-v2
TOOLS       := $(CURDIR)/bin/tools
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

# Pinned tools: `make protos` must reproduce the committed files byte for byte.
PROTOC_GEN_GO_VERSION       := v1.36.12
PROTOC_GEN_GO_TTRPC_VERSION := v1.2.10
STATICCHECK_VERSION         := v0.8.2
PROTOS := $(shell find proto -name '*.proto' | sort)

# Integration tests need root, containerd, runc and busybox-static. Through
# make they must run: a missing prerequisite fails instead of skipping.
TEST_TIMEOUT ?= 9m
TESTFLAGS    ?=
export TETHER_INTEGRATION ?= require

# Debian packages the demo needs (the README's first command).
DEMO_PACKAGES := containerd runc busybox-static git make ca-certificates
# ...and what the tests need besides: crun, the protobuf compiler (with its
# well-known types, which CRIU's build also reads), iptables for containerd 2's
# CRI, the CNI plugins for pods with a network of their own, xfsprogs, lsof
# and dpkg-dev (dpkg-source unpacks Debian's containerd source) for
# containerd's own client suite, procps (pkill, pidof) and erofs-utils for
# containerd's CRI integration suite, CRIU's build dependencies,
# qemu-user-static (the arm64 pod holder's test runs it under
# qemu-aarch64-static), and qemu and mmdebstrap for the VM lane (make
# vm-check: a Debian root from the apt sources, booted under qemu;
# e2fsprogs makes its disk).
TEST_PACKAGES := $(DEMO_PACKAGES) crun criu protobuf-compiler libprotobuf-dev iptables containernetworking-plugins \
	xfsprogs lsof dpkg-dev curl procps erofs-utils strace \
	xz-utils gcc pkg-config libseccomp-dev libprotobuf-c-dev protobuf-c-compiler libnl-3-dev libnet1-dev \
	libcap-dev libbsd-dev uuid-dev python3-protobuf libgnutls28-dev libnftables-dev qemu-user-static \
	qemu-system-x86 mmdebstrap e2fsprogs

# Tools built once per machine and kept between runs, keyed by version.
CACHE ?= /var/cache/tether

# Debian 12's CRIU (3.17) fails on current kernels ("Unexpected rt vDSO area
# bounds"); the checkpoint tests use CRIU 4.1.1 built from Debian's own source.
CRIU_VERSION := 4.1.1
CRIU_SHA256  := f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
CRIU         := $(CACHE)/criu-$(CRIU_VERSION)/criu
export TETHER_CRIU ?= $(CRIU)

# containerd 2.x, built from its Go module (with its ctr and its own runc shim,
# for comparisons); the integration suite runs against it and Debian's 1.6.
CONTAINERD2_VERSION := v2.4.2
CONTAINERD2_DIR     := $(CACHE)/containerd-$(CONTAINERD2_VERSION)

# runc as containerd 2.4.2 tests with it (its script/setup/runc-version):
# Debian 12's runc 1.1.5 reports no mountExtensions.idmap in `runc features`,
# so containerd advertises no user namespaces for a handler that runs it.
# Built with cgo and the seccomp tag (libseccomp-dev): a runc without seccomp
# refuses every spec with a seccomp profile, and containerd's CRI gives one
# to each container that asks for RuntimeDefault.
RUNC_VERSION := v1.5.2
RUNC_DIR     := $(CACHE)/runc-$(RUNC_VERSION)
RUNC         := $(RUNC_DIR)/runc
export TETHER_RUNC ?= $(RUNC)

# nerdctl, the Docker-compatible CLI for containerd, for the integration
# cases users run through it (integration/nerdctl_test.go). Its go.mod has a
# replace directive, so `go install` refuses it: the module's source is
# downloaded and built inside. nerdctl v2.4.2 requires moby/moby/v2
# v2.0.0-beta.28, which the Go module proxy does not serve; it uses only
# that module's pkg/sysinfo and pkg/meminfo (for `nerdctl info`), which
# beta.25, the newest served, has with the same API: the build pins it.
NERDCTL_VERSION  := v2.4.2
NERDCTL_MOBY     := v2.0.0-beta.25
NERDCTL_DIR      := $(CACHE)/nerdctl-$(NERDCTL_VERSION)-moby-$(NERDCTL_MOBY)
NERDCTL          := $(NERDCTL_DIR)/nerdctl
export TETHER_NERDCTL ?= $(NERDCTL)

# The Debian package (make deb): a native version that grows with each
# commit (its time, then its hash); set DEB_VERSION to choose another.
DEB_VERSION ?= $(shell git log -1 --format='0.0.0~git%cd.%h' --date='format:%Y%m%d%H%M%S' 2>/dev/null || echo 0.0.0~dev)

# The field's own suites (make conformance): containerd's client suite on 1.6
# and 2.x, containerd 2.x's CRI integration suite, cri-tools' critest; against
# SHIM=tether (bin/), runc (each containerd's runc shim) or the path of any
# containerd-shim-NAME-vN. SUITES picks some of client,cri,critest.
SHIM ?= tether
SUITES ?= client,cri,critest
CRI_TOOLS_VERSION := v1.37.0
CONFORMANCE_SHIM = $(if $(filter tether,$(SHIM)),bin/$(BINARY),$(SHIM))
# tether built with failpoints: the CRI suite's failpoint handler (runc-fp)
# in tether's column, as containerd's failpoint shim is in runc's.
FAILPOINT_SHIM := bin/failpoint/$(BINARY)
# critest's busybox image's /bin/sh: Debian's dynamically linked busybox,
# whose sh looks commands up in PATH as the official image's does
# (busybox-static's runs its applets itself, so masking /bin/ls hides
# nothing), unpacked from its package into the cache, keyed by version.
BUSYBOX_SH_VERSION = $(shell apt-cache show --no-all-versions busybox 2>/dev/null | sed -n 's/^Version: //p' | tr ':' '_')
BUSYBOX_SH_DIR = $(CACHE)/busybox-$(BUSYBOX_SH_VERSION)
CONFORMANCE = $(GO) run ./integration/conformance -cache $(CACHE) -suites $(SUITES) \
	-containerd 1.6,$(CONTAINERD2_VERSION:v%=%) -containerd2-dir $(CONTAINERD2_DIR) \
	-cri-tools $(CRI_TOOLS_VERSION) -runc $(RUNC) -failpoint-shim $(FAILPOINT_SHIM) \
	-sh $(BUSYBOX_SH_DIR)/bin/busybox

# The VM lane (docs/vm.md): the integration suite's cgroup- and
# init-dependent tests inside a Debian VM (stock kernel, systemd as PID 1,
# cgroup v2) on containerd 1.6 and 2.x, with the cgroupfs and the systemd
# cgroup driver. The image is built once per recipe and apt sources, in
# $(CACHE)/vm-KEY. VMFLAGS narrows a run: VMFLAGS='-run TestOOMKill -driver
# systemd -containerd 2.4.2'.
VMFLAGS ?=
VM = $(GO) run ./integration/vm -cache $(CACHE) -containerd2 $(CONTAINERD2_VERSION:v%=%) \
	-containerd2-dir $(CONTAINERD2_DIR) -runc $(RUNC) -criu $(CRIU)

# package:target, each fuzzed in its package
FUZZ_TARGETS := taskapi:FuzzRequests shim:FuzzValidateID oci:FuzzParseOptions mount:FuzzParseMount
FUZZTIME     ?= 2m

.PHONY: test-integration-1 test-integration-2 bench conformance conformance-ci conformance-compare failpoint-shim busybox-sh vm-image vm-check vm-shell
.PHONY: all deps deps-demo criu containerd2 runc nerdctl build deb fuzz fuzz-short stress install uninstall demo check test test-unit test-integration \
	protos check-protos tools lint clean

all: build

# Installs what a fresh Debian machine lacks (run as root).
deps:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(TEST_PACKAGES)
	$(MAKE) tools criu containerd2 runc nerdctl busybox-sh vm-image

# The demo's lighter set-up: containerd, runc and busybox, no builds.
deps-demo:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEMO_PACKAGES)

containerd2: $(CONTAINERD2_DIR)/containerd

$(CONTAINERD2_DIR)/containerd:
	GOBIN=$(CONTAINERD2_DIR).tmp GOFLAGS=-mod=mod $(GO) install \
		github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD2_VERSION) \
		github.com/containerd/containerd/v2/cmd/ctr@$(CONTAINERD2_VERSION) \
		github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$(CONTAINERD2_VERSION)
	rm -rf $(CONTAINERD2_DIR) && mv $(CONTAINERD2_DIR).tmp $(CONTAINERD2_DIR)

runc: $(RUNC)

$(RUNC):
	rm -rf $(RUNC_DIR).tmp
	CGO_ENABLED=1 GOBIN=$(RUNC_DIR).tmp GOFLAGS=-mod=mod $(GO) install -trimpath -tags 'seccomp urfave_cli_no_docs' \
		github.com/opencontainers/runc@$(RUNC_VERSION)
	$(RUNC_DIR).tmp/runc --version | grep -q '^libseccomp: ' || { echo "runc built without seccomp" >&2; exit 1; }
	rm -rf $(RUNC_DIR) && mv $(RUNC_DIR).tmp $(RUNC_DIR)

nerdctl: $(NERDCTL)

$(NERDCTL):
	rm -rf $(NERDCTL_DIR).tmp && mkdir -p $(NERDCTL_DIR).tmp
	src=$$(GOFLAGS=-mod=mod $(GO) mod download -json github.com/containerd/nerdctl/v2@$(NERDCTL_VERSION) | \
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p') && test -n "$$src" && \
		cp -r "$$src" $(NERDCTL_DIR).tmp/src
	chmod -R u+w $(NERDCTL_DIR).tmp/src
	cd $(NERDCTL_DIR).tmp/src && \
		$(GO) mod edit -replace github.com/moby/moby/v2=github.com/moby/moby/v2@$(NERDCTL_MOBY) && \
		CGO_ENABLED=0 GOFLAGS=-mod=mod $(GO) build -trimpath \
			-ldflags '-s -w -X github.com/containerd/nerdctl/v2/pkg/version.Version=$(NERDCTL_VERSION)' \
			-o $(NERDCTL_DIR).tmp/nerdctl ./cmd/nerdctl
	rm -rf $(NERDCTL_DIR).tmp/src
	$(NERDCTL_DIR).tmp/nerdctl --version
	rm -rf $(NERDCTL_DIR) && mv $(NERDCTL_DIR).tmp $(NERDCTL_DIR)

criu: $(CRIU)

$(CRIU):
	rm -rf $(CACHE)/criu-build && mkdir -p $(CACHE)/criu-build
	# Debian's archive as this machine's apt sources name it (no mirror written here).
	mirror=$$(apt-get indextargets --format '$$(REPO_URI)' 'Label: Debian' 'Identifier: Packages' | head -n 1) && \
		test -n "$$mirror" || { echo "no Debian archive in the apt sources (run apt-get update)" >&2; exit 1; } && \
		curl -fsSL -o $(CACHE)/criu-build/criu.tar.xz "$${mirror}pool/main/c/criu/criu_$(CRIU_VERSION).orig.tar.xz"
	echo "$(CRIU_SHA256)  $(CACHE)/criu-build/criu.tar.xz" | sha256sum -c -
	tar -C $(CACHE)/criu-build -xJf $(CACHE)/criu-build/criu.tar.xz
	$(MAKE) -C $(CACHE)/criu-build/criu-$(CRIU_VERSION) -j2 criu
	install -D -m 0755 $(CACHE)/criu-build/criu-$(CRIU_VERSION)/criu/criu $@
	rm -rf $(CACHE)/criu-build

# Go 1.26's collector (Green Tea) keeps the mark bits of a span of small
# objects in the span's last bytes and writes them when the span is set up:
# a span holding a few objects has its last page resident as well as its
# first. A shim's heap is a few such objects in each of many spans: the
# older collector costs 0.1-0.15 MiB less anonymous memory per shim (make
# bench, docs/benchmarks.md). Go 1.26 keeps it behind GOEXPERIMENT until
# 1.27, which is expected to drop it: other versions build with their
# default.
GC_EXPERIMENT := $(shell $(GO) version | grep -qE ' go1\.26([. ]|$$)' && echo nogreenteagc)

build:
	CGO_ENABLED=0 GOEXPERIMENT=$(GC_EXPERIMENT) $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o bin/$(BINARY) ./cmd/$(BINARY)

# A Debian package of tether, built with dpkg-deb (packaging/deb says why):
# bin/tether_$(DEB_VERSION)_<arch>.deb; `apt install ./bin/tether_*.deb`.
deb: build
	$(GO) run ./packaging/deb -binary bin/$(BINARY) -version '$(DEB_VERSION)' -root . -out bin

install: build
	install -D -m 0755 bin/$(BINARY) $(DESTDIR)$(PREFIX)/bin/$(BINARY)

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/$(BINARY)

# The main job: build, install, start a private containerd and run a busybox
# container through tether (run as root).
demo: install
	$(GO) run ./integration/demo

# Everything CI checks: formatting and static analysis, generated code,
# tests, the field's own suites (containerd's client and CRI suites,
# critest), a short fuzz run, the VM lane.
check: lint check-protos test conformance-ci fuzz-short vm-check

# The stress tests at full size (CI runs them shortened); 1000 terminal execs
# of 6.9 MB each (TestTerminalExecStorm) take about 40 minutes here.
stress: build containerd2
	TETHER_STRESS=1 $(GO) test -count=1 -timeout 150m -v -run 'Storm|Churn|Restart|OOM' ./integration/...
	TETHER_STRESS=1 TETHER_CONTAINERD_DIR=$(CONTAINERD2_DIR) $(GO) test -count=1 -timeout 150m -v -run 'Storm|Churn|Restart|OOM' ./integration/...

# tether against containerd's runc shim on one private containerd (and pods
# on a private containerd 2.x with its CRI), beside the floor (an idle Go
# ttrpc server): a table (bench/results.md), the samples (bench/samples.json),
# the density charts (bench/memory.svg, bench/pods.svg). docs/benchmarks.md
# says what each figure means; a run takes about half an hour.
bench: build containerd2
	$(GO) run ./integration/bench -out bench -shim-dir bin -containerd2-dir $(CONTAINERD2_DIR)

# Fuzz the request handling and input parsing: `make fuzz` for long runs.
fuzz:
	for pt in $(FUZZ_TARGETS); do p=$${pt%%:*}; t=$${pt#*:}; \
		$(GO) test -run='^$$' -fuzz="^$$t\$$" -fuzztime=$(FUZZTIME) ./$$p/ || exit 1; done

# CI's short run counts executions (a few seconds per target here) instead of
# timing them: go1.26's fuzz coordinator can fail a target with "context
# deadline exceeded" when a -fuzztime duration runs out while a worker is busy
# (golang/go#75804, fixed in go1.27); a count has no deadline to race.
fuzz-short:
	$(MAKE) fuzz FUZZTIME=40000x

test: test-unit test-integration

test-unit:
	$(GO) test -race -count=1 $(TESTFLAGS) $$($(GO) list ./... | grep -v /integration)

# Every integration case, against Debian's containerd 1.6 and containerd 2.x.
test-integration: test-integration-1 test-integration-2

test-integration-1: runc
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v $(TESTFLAGS) ./integration/...

test-integration-2: containerd2 runc nerdctl
	TETHER_CONTAINERD_DIR=$(CONTAINERD2_DIR) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v $(TESTFLAGS) ./integration/...

# The suites, offline, against SHIM; fails on any failure. Results, with each
# failing test's output, go to bin/conformance/ (docs/conformance.md).
conformance: build failpoint-shim busybox-sh containerd2 runc
	$(CONFORMANCE) $(CONFORMANCE_FLAGS) -shim $(CONFORMANCE_SHIM)

# What CI runs (make check): every suite against tether, one column, without
# the CRI suite's tests that never reach the shim (they start a containerd of
# their own that runs containerd's runc shim); docs/conformance.md has the
# wall times behind this choice.
conformance-ci:
	$(MAKE) conformance SHIM=tether CONFORMANCE_FLAGS=-ci

# The same suites against containerd's runc shim and tether, side by side:
# a table per suite, test by test.
conformance-compare: build failpoint-shim busybox-sh containerd2 runc
	$(CONFORMANCE) -compare -shim bin/$(BINARY)

# tether with the failpoint interceptor (internal/failpoint), for the CRI
# suite's runc-fp handler.
failpoint-shim:
	CGO_ENABLED=0 $(GO) build -trimpath -tags failpoint -o $(FAILPOINT_SHIM) ./cmd/$(BINARY)

busybox-sh:
	@test -n '$(BUSYBOX_SH_VERSION)' || { echo "apt knows no busybox package: apt-get update" >&2; exit 1; }
	test -x $(BUSYBOX_SH_DIR)/bin/busybox || { \
		tmp=$$(mktemp -d $(BUSYBOX_SH_DIR).tmp.XXXXXX) && chmod 755 $$tmp && \
		(cd $$tmp && apt-get download -q -o APT::Sandbox::User=root busybox) && dpkg-deb -x $$tmp/busybox_*.deb $$tmp/root && \
		mkdir $$tmp/bin && mv $$tmp/root/bin/busybox $$tmp/bin/busybox && rm -rf $$tmp/root $$tmp/busybox_*.deb && \
		{ mv -T $$tmp $(BUSYBOX_SH_DIR) 2>/dev/null || rm -rf $$tmp; }; }
	test -x $(BUSYBOX_SH_DIR)/bin/busybox

vm-image:
	$(VM) image

vm-check: containerd2 runc criu
	$(VM) $(VMFLAGS) check

vm-shell: containerd2 runc criu
	$(VM) $(VMFLAGS) shell

tools:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS) $(GO) install github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc@$(PROTOC_GEN_GO_TTRPC_VERSION)
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

protos:
	test -x $(TOOLS)/protoc-gen-go -a -x $(TOOLS)/protoc-gen-go-ttrpc || $(MAKE) tools
	find proto -name '*.pb.go' -delete
	protoc -I proto -I /usr/include \
		--plugin=protoc-gen-go=$(TOOLS)/protoc-gen-go \
		--plugin=protoc-gen-go-ttrpc=$(TOOLS)/protoc-gen-go-ttrpc \
		--go_out=paths=source_relative:proto \
		--go-ttrpc_out=paths=source_relative:proto \
		$(patsubst proto/%,%,$(PROTOS))

# Fails when the committed generated code differs from what `make protos` makes.
check-protos: protos
	@git diff --exit-code -- proto || { echo "generated proto code is stale: run make protos and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- proto)" || { git status --porcelain -- proto; echo "untracked generated proto files" >&2; exit 1; }

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); test -z "$$out" || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	@# A phony target without a rule does nothing, silently (a merge once
	@# dropped vm-check's rule and make check "passed" the VM lane).
	@for t in $$(sed -n '/^\.PHONY:/{:a;/\\$$/{N;ba};s/\.PHONY://;s/\\\n//g;p}' Makefile); do \
		grep -q "^$$t:" Makefile || { echo "Makefile: .PHONY names $$t, which has no rule"; exit 1; }; done
	$(GO) vet ./...
	$(GO) vet -tags failpoint ./...
	test -x $(TOOLS)/staticcheck || $(MAKE) tools
	$(TOOLS)/staticcheck ./...

clean:
	rm -rf bin
