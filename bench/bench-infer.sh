#!/usr/bin/env bash
# `make bench-infer`: `duli infer` on a labelled folder at each precision beside plain
# OpenVINO from Python at the same precision (same IR, same files, preprocessing like the
# daemon's), printed side by side, with each precision's AUC and its gate against f32
# (`duli evaluate --precision P --gate`; its records are left in bench/out/gates/, the
# records in place are put back).
# Then heatmap milliseconds per image at f32, once over the labelled images, for the shipped
# manifest's occlusion maps and for class-activation maps (a copy of the manifest with
# [heatmap] method = "cam"), with `duli infer --heatmap`.
#
# Env: LABELLED (a folder with NORMAL/ and PNEUMONIA/; default: the 16 shared samples
# linked under bench/out/cxr16), SET=jpeg (instead: the same 16 radiographs as the model's
# PyPI package ships them, JPEGs, from scripts/setup-samples.sh, linked under
# bench/out/cxr16-jpeg), REPEAT (each file this many times per timing run, default 10;
# REPEAT=39 with SET=jpeg is 624 JPEGs), PRECISIONS (default "f32 bf16 int8"), GATE
# (default 1), DULI_BIN.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REPEAT="${REPEAT:-10}"
PRECISIONS="${PRECISIONS:-f32 bf16 int8}"
GATE="${GATE:-1}"
MODEL="models/pneumonia-xception/model.toml"
BIN="${DULI_BIN:-${CARGO_TARGET_DIR:-target}/release/duli}"
[[ -x "$BIN" ]] || { echo "bench-infer: $BIN is not built (cargo build --release -p duli)" >&2; exit 1; }
scripts/setup-openvino.sh >/dev/null
scripts/setup-models.sh >/dev/null
scripts/setup-int8.sh >/dev/null
PY="$ROOT/.cache/quantize/venv/bin/python"   # openvino (same version as the daemon's), numpy, pillow

LABELLED="${LABELLED:-$(bench/labelled-samples.sh)}"
[[ -n "$LABELLED" ]] || { echo "SKIP: no shared samples (set LABELLED, DULI_SHARED_DIR or SET=jpeg)"; exit 0; }
mapfile -t IMAGES < <(find -L "$LABELLED" -type f \( -iname '*.png' -o -iname '*.jp*g' -o -iname '*.dcm' \) | sort)
FILES=()
for ((r = 0; r < REPEAT; r++)); do FILES+=("${IMAGES[@]}"); done
OUT="$(mktemp -d)"
# `duli evaluate --gate` writes each precision's gate record where the daemon reads it.
# The benchmark's set is not the site's gate set: the records in place are kept aside and
# put back at the end, and the benchmark's own are left in bench/out/gates/.
GATES=(models/pneumonia-xception/gate-*.json .cache/models/pneumonia-xception/int8/gate-*.json)
mkdir -p "$OUT/gates-before"
for g in "${GATES[@]}"; do [[ -f "$g" ]] && cp -p --parents "$g" "$OUT/gates-before/"; done
restore_gates() {
    rm -rf bench/out/gates; mkdir -p bench/out/gates
    for g in models/pneumonia-xception/gate-*.json .cache/models/pneumonia-xception/int8/gate-*.json; do
        [[ -f "$g" ]] || continue
        cp -p "$g" bench/out/gates/
        if [[ -f "$OUT/gates-before/$g" ]]; then cp -p "$OUT/gates-before/$g" "$g"; else rm -f "$g"; fi
    done
}
trap 'restore_gates; rm -rf "$OUT"' EXIT

echo "== bench-infer: ${#IMAGES[@]} labelled images in $LABELLED, each ${REPEAT}x per timing run (${#FILES[@]} inferences)"
echo "== CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores;" \
     "bf16 feature: $(grep -qw amx_bf16 /proc/cpuinfo && echo amx-bf16 || (grep -qw avx512_bf16 /proc/cpuinfo && echo avx512-bf16 || echo none))," \
     "int8 feature: $(grep -qw amx_int8 /proc/cpuinfo && echo amx-int8 || (grep -qw avx512_vnni /proc/cpuinfo && echo avx512-vnni || (grep -qw avx_vnni /proc/cpuinfo && echo avx-vnni || echo none)))"
echo "== load before: $(uptime)"

for p in $PRECISIONS; do
    t0=$(date +%s.%N)
    "$BIN" infer -j 1 --model "$MODEL" --precision "$p" "${FILES[@]}" > "$OUT/duli-$p.jsonl" 2> "$OUT/duli-$p.err" || true
    t1=$(date +%s.%N)
    echo "$t0 $t1" > "$OUT/duli-$p.wall"
    # Throughput as shipped: as many files at a time as the requests take plus one per
    # CPU, the network compiled for
    # throughput, INT8 4 images per call (some files decode while others are in the
    # runtime's streams).
    t0=$(date +%s.%N)
    "$BIN" infer --model "$MODEL" --precision "$p" "${FILES[@]}" > /dev/null 2>&1 || true
    t1=$(date +%s.%N)
    echo "$t0 $t1" > "$OUT/duli-$p.wall-jobs"
    "$PY" bench/ov_precision.py "$MODEL" "$p" "${FILES[@]}" > "$OUT/plain-$p.json" 2> "$OUT/plain-$p.err" \
        || echo '{}' > "$OUT/plain-$p.json"
    if [[ "$GATE" == 1 && "$p" != f32 ]]; then
        "$BIN" evaluate --model "$MODEL" --precision "$p" --gate --json "$LABELLED" > "$OUT/eval-$p.json" 2> "$OUT/eval-$p.err" || true
    else
        "$BIN" evaluate --model "$MODEL" --precision "$p" --json "$LABELLED" > "$OUT/eval-$p.json" 2> "$OUT/eval-$p.err" || true
    fi
done
# Heatmaps, f32, each labelled image once: occlusion (the shipped manifest) and class
# activation (a copy of it with method = "cam" and its files named absolutely).
CAM_MODEL="$OUT/model-cam.toml"
sed -e "s|^path = \"|path = \"$ROOT/models/pneumonia-xception/|" \
    -e "s|^weights = \"|weights = \"$ROOT/models/pneumonia-xception/|" \
    -e 's|^method = "occlusion"|method = "cam"|' "$MODEL" > "$CAM_MODEL"
"$BIN" infer --model "$MODEL" --precision f32 --heatmap "${IMAGES[@]}" > "$OUT/heatmap-occlusion.jsonl" 2> "$OUT/heatmap-occlusion.err" || true
"$BIN" infer --model "$CAM_MODEL" --precision f32 --heatmap "${IMAGES[@]}" > "$OUT/heatmap-cam.jsonl" 2> "$OUT/heatmap-cam.err" || true
echo "== load after: $(uptime)"

"$PY" - "$OUT" "$PRECISIONS" <<'PY'
import json, sys, statistics
from pathlib import Path
out, precisions = Path(sys.argv[1]), sys.argv[2].split()
def load(p):
    try: return json.loads(p.read_text() or "{}")
    except Exception: return {}
print()
print(f"{'precision':<9} {'duli wall s':>11} {'duli pipe s':>11} {'duli inf ms':>11} {'plain pipe s':>12} {'plain inf ms':>12} {'duli/plain':>10} {'-jN wall s':>10} {'img/s':>6} {'vs f32':>6} {'vs -j1':>6} {'AUC':>6}  gate")
notes = []
f32_rate = f32_one = None
for p in precisions:
    lines = [json.loads(l) for l in (out / f"duli-{p}.jsonl").read_text().splitlines() if l.strip()]
    ok = [l for l in lines if l.get("status") == "analysed"]
    t0, t1 = map(float, (out / f"duli-{p}.wall").read_text().split())
    if not ok:
        err = (out / f"duli-{p}.err").read_text().strip().splitlines()
        print(f"{p:<9} duli infer failed: {err[-1] if err else 'no output'}")
        continue
    tm = [l["timings_ms"] for l in ok]
    pipe = sum(t["decode"] + t["preprocess"] + t["infer"] for t in tm) / 1000
    inf = statistics.fmean(t["infer"] for t in tm)
    plain = load(out / f"plain-{p}.json")
    ev = load(out / f"eval-{p}.json")
    auc = ev.get("findings", {}).get("PNEUMONIA", {}).get("auc")
    gate = ev.get("gate")
    if gate:
        g = f"{'PASSED' if gate['passed'] else 'FAILED'} ({gate['cpu_feature']}): max|dp| {gate['max_shift']:.4f}, p99 {gate['p99_shift']:.4f}, {gate['flipped']} flipped"
    elif p == "f32":
        g = "reference"
    else:
        g = "not run"
    ratio = pipe / plain["wall_s"] if plain.get("wall_s") else float("nan")
    j0, j1 = map(float, (out / f"duli-{p}.wall-jobs").read_text().split())
    rate = len(lines) / (j1 - j0)
    f32_rate = rate if p == "f32" else f32_rate
    f32_one = len(lines) / (t1 - t0) if p == "f32" else f32_one
    vs = rate / f32_rate if f32_rate else float("nan")
    vs_one = rate / f32_one if f32_one else float("nan")
    print(f"{p:<9} {t1 - t0:>11.2f} {pipe:>11.2f} {inf:>11.2f} {plain.get('wall_s', float('nan')):>12.2f} {plain.get('infer_ms_mean', float('nan')):>12.2f} {ratio:>10.3f} {j1 - j0:>10.2f} {rate:>6.1f} {vs:>6.2f} {vs_one:>6.2f} {auc if auc is None else round(auc, 4)!s:>6}  {g}")
    if plain.get("runtime_precision"):
        notes.append(f"plain OpenVINO at {p}: runtime reports INFERENCE_PRECISION_HINT={plain['runtime_precision']}")
    for l in (out / f"eval-{p}.err").read_text().splitlines():
        if l.startswith("  fails:") or "warning" in l:
            notes.append(f"{p}: {l.strip()}")
print()
print(f"{'heatmap (f32, each image once)':<32} {'n':>3} {'median ms':>10} {'max ms':>8}")
for method in ("occlusion", "cam"):
    path = out / f"heatmap-{method}.jsonl"
    lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []
    ms = sorted(l["timings_ms"]["heatmap"] for l in lines if "heatmap" in l.get("timings_ms", {}))
    done = sum(1 for l in lines if l.get("heatmap", {}).get("state") == "done")
    if ms:
        print(f"{method:<32} {len(ms):>3} {statistics.median(ms):>10.1f} {ms[-1]:>8.1f}  ({done} done)")
    else:
        err = (out / f"heatmap-{method}.err").read_text().strip().splitlines() if (out / f"heatmap-{method}.err").exists() else []
        print(f"{method:<32} failed: {err[-1] if err else 'no output'}")
print("target: heatmap <= 50 ms per image")
print()
print("duli wall s: the whole `duli infer -j 1` process (start, model compile, every file); duli pipe s: the sum")
print("of its per-file decode + preprocess + infer; plain pipe s: Python PIL preprocessing + infer per file, compile")
print("excluded; inf ms: mean infer call. -jN wall s: the whole `duli infer` as shipped (the default -j,")
print("compiled for throughput), img/s its throughput, vs f32 that throughput against f32's as shipped, vs -j1 against")
print("f32 one file at a time (duli wall s of f32). AUC and gate: `duli evaluate --precision P [--gate]`.")
print("target: the fastest gated precision >= 2.5x f32 one file at a time")
for n in notes: print(n)
PY
