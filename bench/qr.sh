#!/usr/bin/env bash
# Query/Retrieve benchmark: C-FIND study-level latency over a store of STUDIES small
# studies, and C-MOVE throughput of one study of ~10 MB instances to DCMTK storescp,
# against Orthanc and `duli run` holding the same data (see bench/README.md).
#
#   bench/qr.sh [STUDIES]     STUDIES small studies (default 10000)
#
# Environment: QUERIES (default 400), MOVES (default 4), MOVE_INSTANCES (default 200),
# PEERS (default "orthanc,duli"), BENCH_OUT (default bench/out),
# DULI_BIN (default: $CARGO_TARGET_DIR/release/duli or target/release/duli),
# DULI_BEFORE (another duli binary, peer "before": PEERS=orthanc,before,duli).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
studies="${1:-10000}"
moves="${MOVE_INSTANCES:-200}"
"$python" "$repo/bench/gen_qr.py" "$out/qr-$studies" "$studies"
"$python" "$repo/bench/gen_dx.py" "$out/dx-move-$moves" "$moves" --per-study "$moves"
echo "host: $(nproc) cores, $(uname -r), storage on $(df --output=source "$out" | tail -1)"
echo "duli binary: ${duli:-not built}"
exec "$python" "$repo/bench/qr.py" "$out/qr-$studies" "$out/dx-move-$moves" \
    --work "$out/work" --duli "$duli" --before "${DULI_BEFORE:-}" --peers "${PEERS:-orthanc,duli}" \
    --queries "${QUERIES:-400}" --moves "${MOVES:-4}"
