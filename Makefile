# tether — containerd shim v2 ("io.containerd.tether.v2").

GO          ?= go
PREFIX      ?= /usr/local
BINARY      := containerd-shim-tether-v2
TOOLS       := $(CURDIR)/bin/tools

# Pinned code generators: `make protos` must reproduce the committed files byte for byte.
PROTOC_GEN_GO_VERSION       := v1.36.12
PROTOC_GEN_GO_TTRPC_VERSION := v1.2.10
STATICCHECK_VERSION         := v0.8.2
PROTOS := $(shell find proto -name '*.proto' | sort)

# Test knobs: integration tests need root, containerd, runc and busybox-static.
TEST_TIMEOUT ?= 18m
TESTFLAGS    ?=

.PHONY: all build install uninstall test test-unit test-integration protos check-protos tools lint clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o bin/$(BINARY) ./cmd/$(BINARY)

install: build
	install -D -m 0755 bin/$(BINARY) $(DESTDIR)$(PREFIX)/bin/$(BINARY)

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/$(BINARY)

test: test-unit test-integration

test-unit:
	$(GO) test -race -count=1 $(TESTFLAGS) ./reaper/... ./shim/... ./cmd/... ./proto/...

test-integration: build
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v $(TESTFLAGS) ./integration/...

tools:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS) $(GO) install github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc@$(PROTOC_GEN_GO_TTRPC_VERSION)

protos: tools
	find proto -name '*.pb.go' -delete
	protoc -I proto -I /usr/include \
		--plugin=protoc-gen-go=$(TOOLS)/protoc-gen-go \
		--plugin=protoc-gen-go-ttrpc=$(TOOLS)/protoc-gen-go-ttrpc \
		--go_out=paths=source_relative:proto \
		--go-ttrpc_out=paths=source_relative:proto \
		$(patsubst proto/%,%,$(PROTOS))

# Fails when the committed generated code differs from what `make protos` produces.
check-protos: protos
	@git diff --exit-code -- proto || { echo "generated proto code is stale: run make protos and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- proto)" || { git status --porcelain -- proto; echo "untracked generated proto files" >&2; exit 1; }

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); test -z "$$out" || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	$(GO) vet ./...
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(TOOLS)/staticcheck ./...

clean:
	rm -rf bin
