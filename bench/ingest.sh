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

source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
count="${1:-60}"
"$python" "$repo/bench/gen_dx.py" "$out/dx-$count" "$count"
echo "host: $(nproc) cores, $(uname -r), storage on $(df --output=source "$out" | tail -1)"
echo "duli binary: ${duli:-not built}"
exec "$python" "$repo/bench/ingest.py" "$out/dx-$count" \
    --work "$out/work" --duli "$duli" \
    --assocs "${ASSOCS:-1,4}" --repeats "${REPEATS:-1}" \
    --receivers "${RECEIVERS:-storescp,orthanc,duli}"
