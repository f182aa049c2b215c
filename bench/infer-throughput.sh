#!/usr/bin/env bash
# `make bench-infer-throughput`: the throughput target of the faster precisions, measured
# the way a shared machine allows: ROUNDS alternating runs of the whole `duli infer`
# process over the same files (start, model compile, every file), in this order per round:
#   f32 one file at a time (-j 1: how `duli infer` scored before it ran files in parallel),
#   PRECISION as shipped (default -j: as many as the requests take plus one per CPU, the network compiled for
#   throughput, INT8 4 images per call),
#   f32 as shipped.
# Prints each round, the medians, and PRECISION's throughput against both f32 runs (the
# median of the per-round ratios).
#
# BASELINE_BIN adds a fourth run per round: the `duli` of an earlier release, which scored
# f32 only, one file at a time (`infer --model BASELINE_MODEL FILES`, run from its
# checkout BASELINE_DIR, which must be given), and PRECISION's throughput against it. The release before precisions existed (2026-11-29) is built with
#   git worktree add /tmp/baseline 15abf9f5 && cd /tmp/baseline &&
#   CARGO_TARGET_DIR=/tmp/baseline-target cargo build --release -p duli
# (it reads the network from its models/ folder and the runtime from its .cache/openvino:
# copy or link both from this checkout).
#
# Env: SET (png: the 16 shared samples, default; jpeg: the same radiographs as the model's
# PyPI package ships them, from scripts/setup-samples.sh), REPEAT (each file this many
# times, default 39: 624 files), ROUNDS (default 5), PRECISION (default int8), DULI_BIN.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export SET="${SET:-png}"
REPEAT="${REPEAT:-39}"
ROUNDS="${ROUNDS:-5}"
PRECISION="${PRECISION:-int8}"
MODEL="models/pneumonia-xception/model.toml"
BIN="${DULI_BIN:-${CARGO_TARGET_DIR:-target}/release/duli}"
[[ -x "$BIN" ]] || { echo "infer-throughput: $BIN is not built (cargo build --release -p duli)" >&2; exit 1; }
scripts/setup-openvino.sh >/dev/null
scripts/setup-models.sh >/dev/null
[[ "$PRECISION" == int8 ]] && scripts/setup-int8.sh >/dev/null

DIR="$(bench/labelled-samples.sh)"
[[ -n "$DIR" ]] || { echo "SKIP: no shared samples (set DULI_SHARED_DIR or SET=jpeg)"; exit 0; }
mapfile -t IMAGES < <(find -L "$DIR" -type f | sort)
FILES=()
for ((r = 0; r < REPEAT; r++)); do FILES+=("${IMAGES[@]}"); done

BASELINE_BIN="${BASELINE_BIN:-}"
if [[ -n "$BASELINE_BIN" ]]; then
    [[ -n "${BASELINE_DIR:-}" && -f "${BASELINE_DIR:-}/Cargo.toml" ]] || {
        echo "infer-throughput: BASELINE_DIR must name the checkout BASELINE_BIN was built from" >&2
        exit 1
    }
    BASELINE_MODEL="${BASELINE_MODEL:-models/pneumonia-xception/model.toml}"
    [[ -x "$BASELINE_BIN" ]] || { echo "infer-throughput: $BASELINE_BIN is not executable" >&2; exit 1; }
fi

# Seconds of one whole `duli infer` run; its output is checked to have every file.
# `run baseline` runs BASELINE_BIN instead.
run() {
    local precision="$1"; shift
    local out t0 t1
    out="$(mktemp)"
    t0=$(date +%s.%N)
    if [[ "$precision" == baseline ]]; then
        (cd "$BASELINE_DIR" && "$BASELINE_BIN" infer --model "$BASELINE_MODEL" "${FILES[@]}") > "$out" 2>/dev/null || true
    else
        "$BIN" infer --model "$MODEL" --precision "$precision" "$@" "${FILES[@]}" > "$out" 2>/dev/null || true
    fi
    t1=$(date +%s.%N)
    local n
    n="$(grep -c '"status":"analysed"' "$out" || true)"
    rm -f "$out"
    [[ "$n" == "${#FILES[@]}" ]] || { echo "infer-throughput: $precision $*: $n of ${#FILES[@]} files analysed" >&2; exit 1; }
    echo "$t1 - $t0" | bc
}

echo "== ${#IMAGES[@]} $SET images x $REPEAT = ${#FILES[@]} files, $ROUNDS rounds; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
echo "== load before: $(uptime)"
ONE=(); FAST=(); SHIPPED=(); BASE=()
printf '%-6s %12s %14s %14s %14s\n' round "f32 -j 1 s" "$PRECISION as shipped s" "f32 as shipped s" "baseline s"
for ((i = 1; i <= ROUNDS; i++)); do
    a="$(run f32 -j 1)"; b="$(run "$PRECISION")"; c="$(run f32)"; d=0
    [[ -n "$BASELINE_BIN" ]] && d="$(run baseline)"
    ONE+=("$a"); FAST+=("$b"); SHIPPED+=("$c"); BASE+=("$d")
    printf '%-6s %12.2f %14.2f %14.2f %14.2f\n' "$i" "$a" "$b" "$c" "$d"
done
echo "== load after: $(uptime)"
python3 - "${#FILES[@]}" "$PRECISION" "${ONE[*]}" "${FAST[*]}" "${SHIPPED[*]}" "${BASE[*]}" <<'PY'
import statistics, sys
n, p = int(sys.argv[1]), sys.argv[2]
one, fast, shipped, base = ([float(x) for x in a.split()] for a in sys.argv[3:7])
med = statistics.median
print(f"median s: f32 -j 1 {med(one):.2f} ({n / med(one):.1f} img/s), {p} as shipped {med(fast):.2f} "
      f"({n / med(fast):.1f} img/s), f32 as shipped {med(shipped):.2f} ({n / med(shipped):.1f} img/s)")
r1 = [a / b for a, b in zip(one, fast)]
r2 = [c / b for c, b in zip(shipped, fast)]
print(f"{p} as shipped vs f32 one file at a time: median {med(r1):.2f}x (rounds {min(r1):.2f}-{max(r1):.2f})")
print(f"{p} as shipped vs f32 as shipped:         median {med(r2):.2f}x (rounds {min(r2):.2f}-{max(r2):.2f})")
if any(base):
    r3 = [d / b for d, b in zip(base, fast)]
    print(f"baseline release (f32) median {med(base):.2f} s ({n / med(base):.1f} img/s); "
          f"{p} as shipped vs it: median {med(r3):.2f}x (rounds {min(r3):.2f}-{max(r3):.2f})")
print("target: >= 2.5x the f32 throughput of the release before precisions (baseline;"
      " f32 one file at a time stands in for it without BASELINE_BIN)")
PY
