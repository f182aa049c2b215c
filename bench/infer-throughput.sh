#!/usr/bin/env bash
# `make bench-infer-throughput`: the throughput target of the faster precisions, measured
# the way a shared machine allows: ROUNDS alternating runs of the whole `duli infer`
# process over the same files (start, model compile, every file), in this order per round:
#   f32 one file at a time (-j 1: how `duli infer` scored before it ran files in parallel),
#   PRECISION as shipped (default -j: two files per CPU, the network compiled for throughput),
#   f32 as shipped.
# Prints each round, the medians, and PRECISION's throughput against both f32 runs (the
# median of the per-round ratios).
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

# Seconds of one whole `duli infer` run; its output is checked to have every file.
run() {
    local precision="$1"; shift
    local out t0 t1
    out="$(mktemp)"
    t0=$(date +%s.%N)
    "$BIN" infer --model "$MODEL" --precision "$precision" "$@" "${FILES[@]}" > "$out" 2>/dev/null || true
    t1=$(date +%s.%N)
    local n
    n="$(grep -c '"status":"analysed"' "$out" || true)"
    rm -f "$out"
    [[ "$n" == "${#FILES[@]}" ]] || { echo "infer-throughput: $precision $*: $n of ${#FILES[@]} files analysed" >&2; exit 1; }
    echo "$t1 - $t0" | bc
}

echo "== ${#IMAGES[@]} $SET images x $REPEAT = ${#FILES[@]} files, $ROUNDS rounds; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
echo "== load before: $(uptime)"
ONE=(); FAST=(); SHIPPED=()
printf '%-6s %12s %14s %14s\n' round "f32 -j 1 s" "$PRECISION as shipped s" "f32 as shipped s"
for ((i = 1; i <= ROUNDS; i++)); do
    a="$(run f32 -j 1)"; b="$(run "$PRECISION")"; c="$(run f32)"
    ONE+=("$a"); FAST+=("$b"); SHIPPED+=("$c")
    printf '%-6s %12.2f %14.2f %14.2f\n' "$i" "$a" "$b" "$c"
done
echo "== load after: $(uptime)"
python3 - "${#FILES[@]}" "$PRECISION" "${ONE[*]}" "${FAST[*]}" "${SHIPPED[*]}" <<'PY'
import statistics, sys
n, p = int(sys.argv[1]), sys.argv[2]
one, fast, shipped = ([float(x) for x in a.split()] for a in sys.argv[3:6])
med = statistics.median
print(f"median s: f32 -j 1 {med(one):.2f} ({n / med(one):.1f} img/s), {p} as shipped {med(fast):.2f} "
      f"({n / med(fast):.1f} img/s), f32 as shipped {med(shipped):.2f} ({n / med(shipped):.1f} img/s)")
r1 = [a / b for a, b in zip(one, fast)]
r2 = [c / b for c, b in zip(shipped, fast)]
print(f"{p} as shipped vs f32 one file at a time: median {med(r1):.2f}x (rounds {min(r1):.2f}-{max(r1):.2f})")
print(f"{p} as shipped vs f32 as shipped:         median {med(r2):.2f}x (rounds {min(r2):.2f}-{max(r2):.2f})")
print("target: >= 2.5x f32 one file at a time")
PY
