# DULI Edge — developer entry points.
#
#   make demo       run the daemon on defaults and send it the sample X-rays
#   make test       the test suite (installs the test peers first; fast default)
#   make test-long  the test suite with the long crash rounds
#   make bench      the ingest benchmark (see bench/README.md)
#   make bench-qr   the Query/Retrieve benchmark against Orthanc (see bench/README.md)
#   make bench-hostile  C-ECHO beside 500 silent connections, duli and Orthanc (bench/README.md)
#   make lint       rustfmt and clippy, warnings are errors

CARGO ?= cargo
SHELL := /bin/bash
BENCH_FILES ?= 60

.PHONY: all build test test-long test-env test-scripts demo bench bench-qr bench-hostile lint fmt models

all: build

build:
	$(CARGO) build --workspace

test-env: models
	scripts/setup-test-env.sh

# The OpenVINO runtime (from the pinned PyPI wheel) and the default model's IR
# (copied from ../shared and checked, or rebuilt); a few seconds once done.
models:
	scripts/setup-openvino.sh
	scripts/setup-models.sh

test: test-env
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory test-scripts

test-long: test-env
	DULI_LONG_TESTS=1 $(CARGO) test --workspace -- --nocapture
	$(MAKE) --no-print-directory test-scripts

# Shell and Python scripts are checked for syntax; tests/*.sh are run.
test-scripts:
	@set -e; for f in scripts/*.sh bench/*.sh .ci/run; do \
		[ -f "$$f" ] || continue; bash -n "$$f"; done
	@set -e; for f in bench/*.py; do \
		[ -f "$$f" ] || continue; .venv/bin/python -c "import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])" "$$f"; done
	@set -e; for t in tests/*.sh tests/*/*.sh; do \
		[ -f "$$t" ] || continue; echo "== $$t"; bash "$$t"; done
	@echo "script checks: ok"

demo: models
	$(CARGO) run --release -- demo

bench: test-env
	$(CARGO) build --release -p duli
	bench/ingest.sh $(BENCH_FILES)

bench-qr: test-env
	$(CARGO) build --release -p duli
	bench/qr.sh

bench-hostile: test-env
	$(CARGO) build --release -p duli
	.venv/bin/python bench/hostile_dicom.py target/release/duli

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
