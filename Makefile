# DULI Edge — developer entry points.
#
#   make demo       run the daemon on defaults and send it the sample X-rays
#   make test       the test suite (installs the test peers first; fast default)
#   make test-long  the test suite with the long crash rounds
#   make bench      the ingest benchmark (see bench/README.md)
#   make bench-qr   the Query/Retrieve benchmark against Orthanc (see bench/README.md)
#   make bench-hostile  C-ECHO beside 500 silent connections and /healthz beside 1,000 idle
#                   TLS sockets (duli and Orthanc), the hostile suite's peak RSS (bench/README.md)
#   make bench-find  a C-FIND no indexed key narrows over 100,000 studies: first response and
#                   the match limit, beside reading and sorting every study (bench/README.md)
#   make bench-worklist  /api/v1/studies latency (p50/p95) with 10,000 studies (bench/README.md)
#   make bench-infer  duli infer at f32, bf16 and int8 beside plain OpenVINO from Python,
#                   with each precision's AUC and gate and the heatmap ms; then release ->
#                   report p50/p99 with the heatmap, a burst of 200, and peak RSS (bench/README.md)
#   make bench-infer-throughput  alternating whole runs: int8 as shipped against f32 one file
#                   at a time and as shipped, medians of ROUNDS (bench/README.md)
#   make bench-memory  peak RSS of the release daemon (model loaded) for one 8192x8192 16-bit
#                   DX and under 32 concurrent associations (bench/README.md)
#   make lint       rustfmt, clippy and rustdoc (warnings are errors) and the dependency policy (cargo deny, offline)
#   make audit      known vulnerabilities in the dependencies (cargo deny advisories; needs the RustSec
#                   database online: a release step)
#   make fuzz       every fuzz target for FUZZ_SECONDS each, or FUZZ_RUNS executions if sooner
#                   (nightly toolchain + cargo-fuzz), see docs/security.md
#   make fuzz-minimize  what the fuzzers grew, reduced to the committed corpus fuzz/minimized/
#   make sbom       CycloneDX SBOM of the daemon into target/sbom/

CARGO ?= cargo
SHELL := /bin/bash
BENCH_FILES ?= 60
FUZZ_SECONDS ?= 60
WORKLIST_STUDIES ?= 10000

.PHONY: all build test test-long test-env test-scripts test-vendor demo bench bench-qr bench-hostile bench-audit bench-find bench-worklist bench-infer bench-infer-throughput bench-memory \
	lint fmt models \
	audit fuzz fuzz-minimize sbom cargo-deny cargo-cyclonedx

all: build

build:
	$(CARGO) build --workspace

test-env: models
	scripts/setup-test-env.sh

# The OpenVINO runtime (from the pinned PyPI wheel), the default model's IR (copied from
# ../shared and checked, or rebuilt) and the demo's sample X-rays (from the model's PyPI
# package); a few seconds once done.
models:
	@echo "== make models: OpenVINO runtime (pinned PyPI wheel -> .cache/openvino/libs)"
	scripts/setup-openvino.sh
	@echo "== make models: default model (models/pneumonia-xception, SHA-256 checked)"
	scripts/setup-models.sh
	@echo "== make models: sample chest X-rays (model's PyPI package -> .cache/samples/cxr-jpeg)"
	scripts/setup-samples.sh
	@echo "== make models: INT8 network (NNCF post-training quantization -> .cache/models/*/int8)"
	scripts/setup-int8.sh

# The hostile-peer suite (daemon/tests/hostile.rs) drives the release daemon.
# DULI_REQUIRE_PEERS=1: what test-env installs must be there; a test that would skip for
# want of it fails instead (only the shared data folder beside the checkout may be absent).
# Every skipped test is listed at the end (DULI_SKIP_LOG): what `make test` installs may
# not be missing (DULI_REQUIRE_PEERS), but the shared data beside the checkout may be.
SKIP_LOG := $(CURDIR)/target/test-skips.txt

test: test-env
	$(CARGO) build --release -p duli
	@mkdir -p $(dir $(SKIP_LOG)) && rm -f $(SKIP_LOG)
	DULI_SKIP_LOG=$(SKIP_LOG) DULI_REQUIRE_PEERS=1 $(CARGO) test --workspace
	$(MAKE) --no-print-directory test-vendor
	DULI_SKIP_LOG=$(SKIP_LOG) $(MAKE) --no-print-directory test-scripts
	@scripts/skip-summary.sh $(SKIP_LOG)

# The patched JPEG decoder's own unit tests (its inverse DCT against libjpeg's arithmetic),
# built apart from the workspace it is excluded from.
test-vendor:
	$(CARGO) test --release --manifest-path vendor/jpeg-decoder/Cargo.toml --lib --target-dir target/vendor

test-long: test-env
	$(CARGO) build --release -p duli
	@mkdir -p $(dir $(SKIP_LOG)) && rm -f $(SKIP_LOG)
	DULI_SKIP_LOG=$(SKIP_LOG) DULI_REQUIRE_PEERS=1 DULI_LONG_TESTS=1 $(CARGO) test --workspace -- --nocapture
	DULI_SKIP_LOG=$(SKIP_LOG) $(MAKE) --no-print-directory test-scripts
	@scripts/skip-summary.sh $(SKIP_LOG)

# Shell and Python scripts are checked for syntax; tests/*.sh are run.
test-scripts:
	@set -e; for f in scripts/*.sh bench/*.sh .ci/run; do \
		[ -f "$$f" ] || continue; bash -n "$$f"; done
	@set -e; for f in bench/*.py; do \
		[ -f "$$f" ] || continue; .venv/bin/python -c "import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])" "$$f"; done
	@set -e; for t in tests/*.sh tests/*/*.sh; do \
		[ -f "$$t" ] || continue; echo "== $$t"; bash "$$t"; done
	@echo "script checks: ok"

# The demo runs at f32: the INT8 network (NNCF, minutes to install) is not built for it.
demo: export DULI_SKIP_INT8 = 1
demo: models
	@echo "== make demo: build the release binary (the first time takes minutes, see README)"
	$(CARGO) build --release -p duli
	@echo "== make demo: start the daemon and send it the sample studies"
	$(CARGO) run --release -q -p duli -- demo

bench: test-env
	$(CARGO) build --release -p duli
	bench/ingest.sh $(BENCH_FILES)

bench-qr: test-env
	$(CARGO) build --release -p duli
	bench/qr.sh

bench-hostile: test-env
	$(CARGO) build --release -p duli
	.venv/bin/python bench/hostile_dicom.py target/release/duli
	.venv/bin/python bench/hostile_https.py
	$(CARGO) test -q -p duli --test hostile -- --nocapture 2>&1 | grep -E "peak RSS|test result"

bench-audit:
	$(CARGO) run --release -q -p duli --example audit_append -- $${AUDIT_DIR:-target} 2000

bench-find:
	$(CARGO) run --release -q -p duli --example find_universal -- $${FIND_DIR:-target} $${STUDIES:-100000}

bench-worklist:
	$(CARGO) build --release -p duli --bin duli --example seed_worklist
	bench/worklist.sh $(WORKLIST_STUDIES)

bench-infer: test-env
	$(CARGO) build --release -p duli
	bench/bench-infer.sh
	@echo "== release -> MQTT report p50/p99: one-image 2800x2800 16-bit studies, heatmap (class activation) made with the result, quiet_period 0; then studies/hour for a burst of 200"
	.venv/bin/python bench/e2e.py 100 --rows 2800 --cols 2800 --heatmap cam --burst 200
	@echo "== peak RSS: one 8192x8192 16-bit instance, and 32 concurrent associations, model loaded"
	.venv/bin/python bench/memory.py $${CARGO_TARGET_DIR:-target}/release/duli

bench-infer-throughput: test-env
	$(CARGO) build --release -p duli
	bench/infer-throughput.sh

bench-memory: test-env
	$(CARGO) build --release -p duli
	.venv/bin/python bench/memory.py $${CARGO_TARGET_DIR:-target}/release/duli

lint: cargo-deny
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps
	@# cargo-deny reads the metadata of every platform's dependencies (windows-sys, …),
	@# which a build on Linux never downloads: fetch them first.
	$(CARGO) fetch --locked
	$(CARGO) deny --offline check bans licenses sources

audit: cargo-deny
	$(CARGO) deny check advisories

fuzz:
	FUZZ_RUNS=$(FUZZ_RUNS) scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-minimize:
	scripts/fuzz-minimize.sh

sbom: cargo-cyclonedx
	scripts/sbom.sh

cargo-deny:
	@$(CARGO) deny --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-deny

cargo-cyclonedx:
	@$(CARGO) cyclonedx --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-cyclonedx

fmt:
	$(CARGO) fmt --all
