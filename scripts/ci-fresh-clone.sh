#!/usr/bin/env bash
# Proves that the checkout works from where newcomers clone it, not only from CI's folder:
# copies the checkout (with its untracked runtime, model, samples and build cache, so only
# the workspace crates rebuild) to a folder under $HOME and one under /tmp, and from each:
#   - builds the debug binary there and runs tests/systemd/run-unit.sh with it (the shipped
#     unit's ProtectHome=/PrivateTmp= hide both places from the service);
#   - runs `duli demo --exit-after-report` from a working directory outside the copy, on
#     built-in defaults: from $HOME with DULI_SHARED_DIR set to the shared folder (when
#     there is one), from /tmp with no shared folder anywhere (the samples that
#     `make models` prepared from PyPI).
# Each copy is removed afterwards. Prints the time each step took.
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared=""
for c in "${DULI_SHARED_DIR:-}" "$src/../shared"; do
    [ -n "$c" ] && [ -d "$c/data/cxr-samples" ] && { shared="$(cd "$c" && pwd)"; break; }
done

step() { printf '== %s (%s)\n' "$*" "$(date +%T)"; }

one_copy() {  # one_copy PARENT DEMO_SHARED(yes|no)
    local parent="$1" with_shared="$2" dir copy cwd t0
    t0=$SECONDS
    dir="$(mktemp -d "$parent/duli-clone-XXXXXX")"
    copy="$dir/duli-edge"
    trap 'rm -rf "$dir"' RETURN
    step "copy the checkout to $copy"
    mkdir -p "$copy"
    # Everything but the release build, incremental caches, test executables, bulky
    # benchmark output and a fuzzer's working state (the dependencies' compiled libraries
    # are what saves the rebuild).
    tar -C "$src" --exclude=./target/release --exclude="./target/*/incremental" \
        --exclude="./target/debug/deps/*-????????????????" \
        --exclude=./bench/out --exclude=./duli-data \
        --exclude=./fuzz/target --exclude=./fuzz/grown --exclude=./fuzz/artifacts \
        --exclude=./fuzz/logs -cf - . |
        tar -C "$copy" -xf -
    step "build the debug binary in $copy"
    (cd "$copy" && env -u CARGO_TARGET_DIR cargo build -q -p duli --bin duli)
    step "tests/systemd/run-unit.sh from $copy"
    (cd "$copy" && env -u CARGO_TARGET_DIR -u DULI_BIN bash tests/systemd/run-unit.sh)
    cwd="$dir/elsewhere"
    mkdir -p "$cwd"
    if [ "$with_shared" = yes ]; then
        if [ -z "$shared" ]; then
            echo "SKIP: no shared folder on this machine for the DULI_SHARED_DIR demo run"
        else
            step "duli demo --exit-after-report from $cwd, DULI_SHARED_DIR=$shared"
            (cd "$cwd" && env -u DULI_OPENVINO_LIB DULI_SHARED_DIR="$shared" \
                timeout 600 "$copy/target/debug/duli" demo --exit-after-report) | tee "$dir/demo.out"
            grep -q "16/16 studies analysed" "$dir/demo.out"
            grep -q "data/cxr-samples/dicom/explicit-le (DULI_SHARED_DIR)" "$dir/demo.out"
        fi
    else
        step "duli demo --exit-after-report from $cwd, no shared folder anywhere"
        (cd "$cwd" && env -u DULI_SHARED_DIR -u DULI_OPENVINO_LIB \
            timeout 600 "$copy/target/debug/duli" demo --exit-after-report) | tee "$dir/demo.out"
        grep -q "16/16 studies analysed" "$dir/demo.out"
        grep -q "prepared by \`make models\`" "$dir/demo.out"
    fi
    step "done with $copy in $((SECONDS - t0)) s"
}

one_copy "${HOME:?}" yes
one_copy /tmp no
