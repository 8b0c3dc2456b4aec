# The two commands a new machine needs are `make demo` and `make test`; both install what
# is missing first (Debian packages: protobuf-compiler, etcd-server, etcd-client, chromium,
# iproute2, iptables; docker.io if it can be installed: without it the container test is
# skipped, loudly).
CARGO ?= cargo
SHELL := /bin/bash
TEST_LOG ?= $(or $(TMPDIR),/tmp)/smartstack-test.log

.PHONY: deps build test lint demo cluster-demo bench image release dist install deb

deps:
	@./deploy/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins

# The end-to-end tests run the real binaries, so they are built first. The last line sums
# every test binary's result (cargo's own last line is that of an empty doc-test run).
test: build
	set -o pipefail; $(CARGO) test --workspace 2>&1 | tee $(TEST_LOG)
	@awk '/^test result:/ {p+=$$4; f+=$$6} END {printf "%d passed, %d failed\n", p, f}' $(TEST_LOG)

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The container image smartstack-rs:<version> and :latest (nerve, synapse, etcdctl), assembled
# from the release binaries and their shared libraries and `docker import`ed: nothing is
# pulled. deploy/docker/Dockerfile is the conventional build for machines with a registry.
image: deps
	$(CARGO) build --release --bin nerve --bin synapse
	./deploy/docker/build-image.sh

demo: build
	./deploy/demo.sh

# The multi-host scenarios (tests/e2e/multi_host.rs) narrated: simulated hosts in network
# namespaces, a 3-member etcd, releases and failures under load; needs root.
cluster-demo: build
	./deploy/cluster-demo.sh

# Benchmarks against HAProxy and the bare backend (not part of `make test`): installs
# haproxy, nginx, wrk, iperf3, gnuplot; writes docs/benchmarks.md and docs/benchmarks.png.
bench: deps
	./deploy/bench/install.sh
	$(CARGO) build --release --bins
	./deploy/bench/run.sh

# Packaging (docs/deployment.md): deploy/package.sh puts the binaries, the example configs,
# the systemd units (deploy/systemd) and the docs in place with install(1).
#   make dist                                   target/dist/smartstack-rs-<version>-<arch>.tar.gz
#   make install PREFIX=/usr/local DESTDIR=...  bin/, etc/{nerve,synapse}, lib/systemd/system, share/doc
#   make deb                                    target/dist/smartstack-rs_<version>_<arch>.deb
# All three take BIN_DIR=DIR to package binaries built elsewhere (the tests give the debug
# ones); without it they build the release binaries first.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
DIST_DIR ?= $(TARGET_DIR)/dist
PREFIX ?= /usr/local
SYSCONFDIR ?= $(PREFIX)/etc
DESTDIR ?=
ifeq ($(origin BIN_DIR),undefined)
BIN_DIR := $(TARGET_DIR)/release
PACKAGE_INPUT := release
endif

release:
	$(CARGO) build --release --bin nerve --bin synapse

dist: $(PACKAGE_INPUT)
	./deploy/package.sh dist --bin-dir $(BIN_DIR) --out $(DIST_DIR)

install: $(PACKAGE_INPUT)
	./deploy/package.sh install --bin-dir $(BIN_DIR) --prefix $(PREFIX) --sysconfdir $(SYSCONFDIR) --destdir "$(DESTDIR)"

deb: $(PACKAGE_INPUT)
	./deploy/package.sh deb --bin-dir $(BIN_DIR) --out $(DIST_DIR)
