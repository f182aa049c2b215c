#!/usr/bin/env bash
# Rebuilds the pneumonia-xception OpenVINO IR from its PyPI source, with the tool versions
# SOURCE.md pins, into this folder; fails loudly when any input or output hash differs.
# Needs python3.11 and ~2 GB for a private venv under build/ (TensorFlow-CPU).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="$HERE/build"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
mkdir -p "$BUILD"
if [[ ! -x "$BUILD/venv/bin/python" ]]; then
    "$PY" -m venv "$BUILD/venv"
fi
"$BUILD/venv/bin/pip" install --quiet \
    tensorflow-cpu==2.21.0 keras==3.15.1 tf2onnx==1.17.0 onnx==1.23.2 openvino==2026.4.1
"$BUILD/venv/bin/pip" download --quiet --no-deps --only-binary=:all: \
    --dest "$BUILD" pneumonia-model-package==0.3.0
"$BUILD/venv/bin/python" "$HERE/rebuild.py" \
    --wheel "$BUILD/pneumonia_model_package-0.3.0-py3-none-any.whl" --out "$HERE" --work "$BUILD"
