# l3iso — build, generate, check and test.
#
#   make build            bin/l3iso and the CNI plugin bin/cni/l3iso
#   make install          bin/l3iso -> $(SBINDIR) (/usr/local/sbin), the plugin -> $(CNIBINDIR) (/opt/cni/bin)
#   make generate         rebuild the BPF objects (pkg/maps/*_bpfel.{go,o}) from bpf/*.c
#   make check-generated  fail if the committed BPF objects are stale
#   make test             vet, gofmt, then every test (run as root: privileged tests run)
#   make demo             a guided tour of the L3 rules, confined to its own netns,
#                         cgroup and bpffs directory (needs root)
#   make deps             the tools the demo needs on a fresh Debian 12 (.ci/run
#                         installs everything the tests need)
#   make bench / bench-quick   bin/l3iso-bench measures bin/l3iso: loopback, shared, host,
#                              bridge, bridge_ct, routed, direct (needs root)
#   make bench-hooks[-quick]   the socket-hook and control-plane cost benchmarks
#   make clean
#
# The generated .go/.o files are committed, so `make build` and `make test`
# need Go only; clang-16 is needed for `generate` and `check-generated`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

GO     ?= go
BIN    := bin/l3iso
CNIBIN := bin/cni/l3iso
SBINDIR   ?= /usr/local/sbin
CNIBINDIR ?= /opt/cni/bin
BENCH  := bin/l3iso-bench
GOTEST_TIMEOUT ?= 40m

export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all build install bench-build generate check-generated test demo bench bench-quick bench-hooks bench-hooks-quick deps clean

all: build

# CGO_ENABLED=0: a static binary. Linked against libc (the net package's
# cgo resolver, which l3iso never needs), every l3iso command paid the
# dynamic loader and cgo's start-up: ~2.5 ms of a ~20 ms `container add`.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/l3iso
	CGO_ENABLED=0 $(GO) build -o $(CNIBIN) ./cmd/l3iso-cni

# The CNI plugin is installed under its type's name, l3iso, where runtimes
# look for plugins (CNI_PATH; podman, containerd and the kubelet default to
# /opt/cni/bin).
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/l3iso
	install -D -m 0755 $(CNIBIN) $(DESTDIR)$(CNIBINDIR)/l3iso

# bpf2go runs clang-16 with libbpf's headers and the kernel UAPI headers
# (asm/ lives in /usr/include/x86_64-linux-gnu, from linux-libc-dev).
generate:
	@if ! command -v clang-16 >/dev/null 2>&1 || [ ! -f /usr/include/bpf/bpf_helpers.h ]; then \
		echo "installing clang-16, llvm-16 and libbpf-dev (needed to compile bpf/*.c)"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y clang-16 llvm-16 libbpf-dev linux-libc-dev; \
	fi
	$(GO) generate ./pkg/maps/...

# check-generated regenerates into the tree and fails if that changed any of
# bpf2go's outputs compared with the last commit.
#
# Why a byte comparison is good enough: with Debian 12's clang-16, bpf2go's
# output is reproducible. Generating repeatedly, and in another directory,
# gave byte-identical .o and .go files: bpf2go strips DWARF (llvm-strip -g),
# and what stays (code, BTF, .BTF.ext line info) holds no absolute paths or
# timestamps. Should a future clang break that, compare
# `llvm-objdump-16 -d` output and the generated .go instead.
#
# Only bpf2go's outputs are checked (pkg/maps/*_bpfel.*, including new,
# untracked ones), not the hand-written files beside them, so uncommitted
# work in pkg/maps/*.go is not mistaken for stale objects.
# GIT_OPTIONAL_LOCKS=0: `git status` must not rewrite the index.
GENERATED := pkg/maps/*_bpfel.go pkg/maps/*_bpfel.o

check-generated: generate
	@if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		echo "check-generated needs a git checkout (it compares with the last commit)" >&2; exit 1; \
	fi
	@changes=$$(GIT_OPTIONAL_LOCKS=0 git status --porcelain -- $(foreach f,$(GENERATED),'$(f)')); \
	if [ -n "$$changes" ]; then \
		echo "$$changes" >&2; \
		echo "generated BPF objects are stale: run make generate and commit" >&2; \
		exit 1; \
	fi; \
	echo "generated BPF objects are up to date"

# gofmt checks every Go file git knows or would add (tracked + untracked,
# minus .gitignore'd), so a new file is checked before its first commit.
test:
	@if [ "$$(id -u)" != 0 ]; then echo "warning: not root: privileged tests will be skipped (or fail where CI=true / L3ISO_REQUIRE_PRIVILEGED=1)" >&2; fi
	$(GO) vet ./...
	@files=$$(git ls-files -co --exclude-standard -- '*.go' | while read -r f; do if [ -e "$$f" ]; then echo "$$f"; fi; done); \
	[ -n "$$files" ] || { echo "no Go files found by git ls-files" >&2; exit 1; }; \
	unformatted=$$(gofmt -l $$files); \
	if [ -n "$$unformatted" ]; then \
		echo "these files need gofmt (run: gofmt -w FILE):" >&2; echo "$$unformatted" >&2; exit 1; \
	fi
	$(GO) test -count=1 -timeout $(GOTEST_TIMEOUT) ./...

demo: build
	bash examples/demo.sh $(BIN)

# The benchmark is its own binary (cmd/l3iso-bench, engine bench/engine):
# it measures the l3iso binary beside it. Every topology, interleaved
# rounds, scaling, bpf_stats and control plane; Markdown on stdout,
# report.md, results.json, details.json and chart.svg in bench/results/.
# Needs root.
bench-build: build
	CGO_ENABLED=0 $(GO) build -o $(BENCH) ./cmd/l3iso-bench

bench: bench-build
	$(BENCH) --dir bench/results

bench-quick: bench-build
	$(BENCH) --quick --dir bench/results

# The socket-hook and control-plane cost benchmarks (bench/*_test.go).
bench-hooks:
	$(GO) test -run '^$$' -bench . -count=1 ./bench/...

bench-hooks-quick:
	$(GO) test -run '^$$' -bench . -benchtime=1x -short -count=1 ./bench/...

# The tools the demo (examples/demo.sh) calls: ip (iproute2), nsenter
# (util-linux), python3. Installs only what is missing, and says nothing
# when everything is there. The tests need more (nftables, kmod,
# prometheus, podman, containerd, nginx, redis, ...): .ci/run installs
# those, with no daemon started.
DEPS := ip:iproute2 nsenter:util-linux python3:python3

deps:
	@missing=; \
	for d in $(DEPS); do \
		cmd=$${d%%:*}; pkg=$${d#*:}; \
		command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || [ -x /sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

clean:
	rm -rf bin
