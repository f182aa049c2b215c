# Sourced by the benchmark scripts: sets `repo`, `out` (BENCH_OUT, default bench/out),
# `python` (the repository's .venv) and `duli` (DULI_BIN, else the release build in
# $CARGO_TARGET_DIR or target/; empty when not built), and checks the DCMTK tools.

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${BENCH_OUT:-$repo/bench/out}"
python="$repo/.venv/bin/python"

for tool in storescu storescp sync; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found (scripts/setup-test-env.sh)" >&2; exit 1; }
done
[ -x "$python" ] || "$repo/scripts/setup-test-env.sh"

duli="${DULI_BIN:-}"
if [ -z "$duli" ]; then
    for candidate in "${CARGO_TARGET_DIR:-}/release/duli" "$repo/target/release/duli"; do
        if [ -x "$candidate" ]; then duli="$candidate"; break; fi
    done
fi
mkdir -p "$out"
