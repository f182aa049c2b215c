#!/usr/bin/env bash
# Worklist benchmark: p50/p95 of GET /api/v1/studies (default page, a search, the urgent
# filter) with STUDIES synthetic studies in the store (see bench/README.md).
#
#   bench/worklist.sh [STUDIES]     STUDIES studies (default 10000)
#
# Environment: REQUESTS (default 200 per query), SEED_BIN (default: the seed_worklist
# example beside the duli binary), DULI_BIN (default:
# $CARGO_TARGET_DIR/release/duli or target/release/duli).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
studies="${1:-10000}"
seed="${SEED_BIN:-$(dirname "$duli")/examples/seed_worklist}"
[ -x "$seed" ] || { echo "bench: $seed not built (make bench-worklist)" >&2; exit 1; }
echo "host: $(nproc) cores, $(uname -r), storage on $(df --output=source "$out" | tail -1)"
echo "duli binary: $duli"
exec "$python" "$repo/bench/worklist.py" --duli "$duli" --seed "$seed" \
    --studies "$studies" --requests "${REQUESTS:-200}" --work "$out/worklist"
