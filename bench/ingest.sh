#!/usr/bin/env bash
# Ingest benchmark: the same set of synthetic ~10 MB DX instances is sent with
# DCMTK storescu to DCMTK storescp (+ a final sync), to Orthanc (fsync per file)
# and to `duli run` on the same disk, with 1 and 4 parallel associations.
#
#   bench/ingest.sh [COUNT]        COUNT files (default 60; 200 is the reference set)
#
# Environment: REPEATS (default 1: median of N runs), ASSOCS (default "1,4"),
# RECEIVERS (default "storescp,orthanc,duli"), BENCH_OUT (default bench/out),
# DULI_BIN (default: $CARGO_TARGET_DIR/release/duli or target/release/duli).
# DCMTK 3.6.7 leaves Nagle's algorithm on unless TCP_NODELAY=1 is set: every
# storescu, storescp and Orthanc here runs with TCP_NODELAY=1 (their best).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
count="${1:-60}"
out="${BENCH_OUT:-$repo/bench/out}"
python="$repo/.venv/bin/python"

for tool in storescu storescp sync; do
    command -v "$tool" >/dev/null || { echo "ingest: $tool not found (scripts/setup-test-env.sh)" >&2; exit 1; }
done
[ -x "$python" ] || "$repo/scripts/setup-test-env.sh"

duli="${DULI_BIN:-}"
if [ -z "$duli" ]; then
    for candidate in "${CARGO_TARGET_DIR:-}/release/duli" "$repo/target/release/duli"; do
        if [ -x "$candidate" ]; then duli="$candidate"; break; fi
    done
fi

mkdir -p "$out"
"$python" "$repo/bench/gen_dx.py" "$out/dx-$count" "$count"
echo "host: $(nproc) cores, $(uname -r), storage on $(df --output=source "$out" | tail -1)"
echo "duli binary: ${duli:-not built}"
exec "$python" "$repo/bench/ingest.py" "$out/dx-$count" \
    --work "$out/work" --duli "$duli" \
    --assocs "${ASSOCS:-1,4}" --repeats "${REPEATS:-1}" \
    --receivers "${RECEIVERS:-storescp,orthanc,duli}"
