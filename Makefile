# The two commands of the README: `make demo` and `make test`. Everything else here serves them.
SHELL := /bin/bash
CLUSTER := tests/cluster
CARGO ?= cargo

# make test runs its own control plane (own state dir and ports), so it never disturbs
# the one `make demo` leaves running.
TEST_ENV := DRIFTWATCH_CLUSTER_DIR=$${TMPDIR:-/tmp}/driftwatch-test-cluster DRIFTWATCH_PORT_BASE=26500 DRIFTWATCH_NODE=1

.PHONY: all build tools image cluster-up cluster-down demo demo-down test test-unit test-cluster-scripts crds fmt-check

all: build

build:
	$(CARGO) build --release --locked

tools:
	$(CLUSTER)/build-tools

## image: the container image (static binary, buildah, no registry) as an OCI archive in
## target/image/, imported into the local node when one is running.
image:
	scripts/image

cluster-up: tools
	$(CLUSTER)/up

cluster-down:
	$(CLUSTER)/down

## demo: build what is missing, start the local control plane, install two releases,
## cause drift, show what Driftwatch finds. The control plane stays up; `make demo-down` stops it.
demo: build tools
	scripts/demo

demo-down:
	$(CLUSTER)/down

## test: everything — unit tests, the control-plane scripts' own test, and the end-to-end
## tests against a real control plane that is started here and stopped even on failure.
test: tools
	$(CARGO) build --locked --all-targets
	$(CARGO) test --locked --lib --bins
	$(CLUSTER)/selftest
	@set -euo pipefail; export $(TEST_ENV); \
	trap '$(CLUSTER)/down' EXIT; \
	$(CLUSTER)/up >/dev/null; \
	eval "$$($(CLUSTER)/env)"; \
	scripts/image >/dev/null; \
	$(CARGO) test --locked --no-fail-fast --test '*' -- --test-threads=4
