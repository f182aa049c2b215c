#!/usr/bin/env bash
# Benchmarks the inference pipeline per image (decode, preprocess, infer, heatmap) and the
# same model through plain OpenVINO in Python on the same input, with the ratio.
# Env: PYTHON (a Python with the openvino wheel of scripts/setup-openvino.sh and numpy;
# default: a venv made on first use in .cache/openvino/venv), RUNS (default 20),
# SAMPLES (default ../shared/data/cxr-samples).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup-openvino.sh >/dev/null
scripts/setup-models.sh >/dev/null
RUNS="${RUNS:-20}"
SAMPLES="${SAMPLES:-}"
if [[ -z "$SAMPLES" ]]; then
    for c in ../shared ../../shared; do [[ -d "$c/data/cxr-samples" ]] && { SAMPLES="$c/data/cxr-samples"; break; }; done
fi
[[ -n "$SAMPLES" ]] || { echo "SKIP: no cxr-samples (set SAMPLES)"; exit 0; }
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    # The plain-OpenVINO peer: the same wheel version the daemon loads, in a venv of its own.
    OV_VERSION="$(cat .cache/openvino/.version)"
    VENV=.cache/openvino/venv
    if ! "$VENV/bin/python" -c "import openvino, numpy, sys; sys.exit(openvino.__version__.split('-')[0] != '$OV_VERSION')" 2>/dev/null; then
        echo "setting up $VENV (openvino==$OV_VERSION, numpy)"
        python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check "openvino==$OV_VERSION" numpy
    fi
    PY="$VENV/bin/python"
fi
TENSOR="$(mktemp)"
trap 'rm -f "$TENSOR"' EXIT
cargo build --release -q -p duli --example infer_bench
BIN="${CARGO_TARGET_DIR:-target}/release/examples/infer_bench"
echo "== DICOM (explicit VR LE, 16 bits) =="
"$BIN" --runs "$RUNS" "$SAMPLES"/dicom/explicit-le/*.dcm
echo "== DICOM encodings of PNEUMONIA_01 =="
"$BIN" --runs 5 "$SAMPLES"/dicom/*/PNEUMONIA_01.dcm
echo "== PNG =="
"$BIN" --runs "$RUNS" "$SAMPLES"/png/*.png
# The machine is shared: time ours and plain OpenVINO alternately on the same input, three
# rounds, and compare the best round of each.
echo "== infer step vs plain OpenVINO (Python), same IR and input, alternating =="
OURS=(); PLAIN=()
for round in 1 2 3; do
    O="$(BENCH_TENSOR="$TENSOR" "$BIN" --runs "$RUNS" "$SAMPLES"/png/PNEUMONIA_01.png | sed -n 's/^median infer_ms over files: //p')"
    P="$("$PY" bench/ov_plain.py models/pneumonia-xception/pneumonia_xception_fp16.xml "$TENSOR" "$RUNS" | sed -n 's/^plain_openvino_infer_ms //p')"
    echo "round $round: duli $O ms, plain $P ms"
    OURS+=("$O"); PLAIN+=("$P")
done
python3 -c "o=min([$(IFS=,; echo "${OURS[*]}")]); p=min([$(IFS=,; echo "${PLAIN[*]}")]); print(f'best of 3: duli infer {o:.2f} ms, plain OpenVINO {p:.2f} ms, ratio {o/p:.3f}')"
