#!/usr/bin/env bash
# `make bench-infer-throughput`: the throughput target of the faster precisions, measured
# the way a shared machine allows: ROUNDS alternating runs of the whole `duli infer`
# process over the same files (start, model compile, every file), in this order per round:
#   f32 one file at a time (-j 1: how `duli infer` scored before it ran files in parallel),
#   PRECISION as shipped (default -j: as many as the requests take plus one per CPU, the network compiled for
#   throughput, INT8 4 images per call),
#   f32 as shipped.
# Prints each round, the medians, and PRECISION's throughput against both f32 runs (the
# median of the per-round ratios). Each round also runs each configuration on one file:
# the process start and model compile, which a whole run carries once (INT8 compiles
# slower than f32: its quantized graph is transformed at load), so the steady rate
# (files after the first per second of the rest of the run, as a running daemon scores a
# burst) is printed beside the whole-run one.
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

# Seconds of one whole `duli infer` run over RUN (default: every file); its output is
# checked to have every file. `run baseline` runs BASELINE_BIN instead.
RUN=()
run() {
    local precision="$1"; shift
    local out t0 t1
    local files=("${FILES[@]}")
    [[ ${#RUN[@]} -gt 0 ]] && files=("${RUN[@]}")
    out="$(mktemp)"
    t0=$(date +%s.%N)
    if [[ "$precision" == baseline ]]; then
        (cd "$BASELINE_DIR" && "$BASELINE_BIN" infer --model "$BASELINE_MODEL" "${files[@]}") > "$out" 2>/dev/null || true
    else
        "$BIN" infer --model "$MODEL" --precision "$precision" "$@" "${files[@]}" > "$out" 2>/dev/null || true
    fi
    t1=$(date +%s.%N)
    local n
    n="$(grep -c '"status":"analysed"' "$out" || true)"
    rm -f "$out"
    [[ "$n" == "${#files[@]}" ]] || { echo "infer-throughput: $precision $*: $n of ${#files[@]} files analysed" >&2; exit 1; }
    echo "$t1 - $t0" | bc
}

# The same run on the first file alone (start and compile).
run_one() {
    RUN=("${FILES[0]}")
    run "$@"
    RUN=()
}

echo "== ${#IMAGES[@]} $SET images x $REPEAT = ${#FILES[@]} files, $ROUNDS rounds; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
echo "== load before: $(uptime)"
ONE=(); FAST=(); SHIPPED=(); BASE=(); ONE1=(); FAST1=(); SHIPPED1=(); BASE1=()
printf '%-6s %12s %14s %14s %14s   %s\n' round "f32 -j 1 s" "$PRECISION as shipped s" "f32 as shipped s" "baseline s" "(one file: the same four)"
for ((i = 1; i <= ROUNDS; i++)); do
    a="$(run f32 -j 1)"; b="$(run "$PRECISION")"; c="$(run f32)"; d=0
    [[ -n "$BASELINE_BIN" ]] && d="$(run baseline)"
    a1="$(run_one f32 -j 1)"; b1="$(run_one "$PRECISION")"; c1="$(run_one f32)"; d1=0
    [[ -n "$BASELINE_BIN" ]] && d1="$(run_one baseline)"
    ONE+=("$a"); FAST+=("$b"); SHIPPED+=("$c"); BASE+=("$d")
    ONE1+=("$a1"); FAST1+=("$b1"); SHIPPED1+=("$c1"); BASE1+=("$d1")
    printf '%-6s %12.2f %14.2f %14.2f %14.2f   (%.2f %.2f %.2f %.2f)\n' "$i" "$a" "$b" "$c" "$d" "$a1" "$b1" "$c1" "$d1"
done
echo "== load after: $(uptime)"
python3 - "${#FILES[@]}" "$PRECISION" "${ONE[*]}" "${FAST[*]}" "${SHIPPED[*]}" "${BASE[*]}" \
    "${ONE1[*]}" "${FAST1[*]}" "${SHIPPED1[*]}" "${BASE1[*]}" <<'PY'
import statistics, sys
n, p = int(sys.argv[1]), sys.argv[2]
one, fast, shipped, base = ([float(x) for x in a.split()] for a in sys.argv[3:7])
one1, fast1, shipped1, base1 = ([float(x) for x in a.split()] for a in sys.argv[7:11])
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
# Steady rate: the files after the first, over the run less its one-file run.
def steady(whole, single):
    return [(n - 1) / (w - s) for w, s in zip(whole, single)]
s_one, s_fast, s_shipped = steady(one, one1), steady(fast, fast1), steady(shipped, shipped1)
print(f"one file (start + compile) median s: f32 -j 1 {med(one1):.2f}, {p} as shipped {med(fast1):.2f}, "
      f"f32 as shipped {med(shipped1):.2f}" + (f", baseline {med(base1):.2f}" if any(base) else ""))
print(f"steady img/s (after the first file): f32 -j 1 {med(s_one):.1f}, {p} as shipped {med(s_fast):.1f}, "
      f"f32 as shipped {med(s_shipped):.1f}")
r4 = [b / a for a, b in zip(s_one, s_fast)]
print(f"steady: {p} as shipped vs f32 one file at a time: median {med(r4):.2f}x (rounds {min(r4):.2f}-{max(r4):.2f})")
if any(base):
    s_base = steady(base, base1)
    r5 = [b / d for d, b in zip(s_base, s_fast)]
    print(f"steady: baseline release {med(s_base):.1f} img/s; {p} as shipped vs it: "
          f"median {med(r5):.2f}x (rounds {min(r5):.2f}-{max(r5):.2f})")
print("target: >= 2.5x the f32 throughput of the release before precisions (baseline;"
      " f32 one file at a time stands in for it without BASELINE_BIN)")
PY
