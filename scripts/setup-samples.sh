#!/usr/bin/env bash
# Prepares the demo's sample studies without any shared folder: the 16 labelled chest
# X-rays (8 NORMAL, 8 PNEUMONIA; Kermany et al. 2018, CC BY 4.0) that the default model's
# PyPI package ships as JPEGs are extracted into .cache/samples/cxr-jpeg/, each checked
# against models/pneumonia-xception/samples.sha256, with their attribution and licence
# beside them. `duli demo` sends them as DICOM DX studies with fictitious headers.
# Idempotent: a complete, verified folder is left alone (no download).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.cache/samples/cxr-jpeg"
SUMS="$ROOT/models/pneumonia-xception/samples.sha256"
PACKAGE="pneumonia-model-package==0.3.0"
WHEEL_NAME="pneumonia_model_package-0.3.0-py3-none-any.whl"
WHEEL_SHA256="4bb1ee80366db5de818c7255e62878871b8ec545681193f429e2575b791d3536"

if [[ -d "$DEST" ]] && (cd "$DEST" && sha256sum --quiet -c "$SUMS" >/dev/null 2>&1); then
    echo "sample chest X-rays present and verified in $DEST"
    exit 0
fi

# The model rebuild downloads the same wheel; use it when it is there.
wheel="$ROOT/models/pneumonia-xception/build/$WHEEL_NAME"
work="$ROOT/.cache/samples/download"
if [[ ! -f "$wheel" ]]; then
    echo "downloading $PACKAGE from PyPI (about 83 MB) for its sample chest X-rays"
    mkdir -p "$work"
    PY="${PYTHON:-python3}"
    source "$ROOT/scripts/python-ready.sh"
    ensure_python pip
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "$PACKAGE"
    wheel="$work/$WHEEL_NAME"
fi
got="$(sha256sum "$wheel" | cut -d' ' -f1)"
if [[ "$got" != "$WHEEL_SHA256" ]]; then
    echo "setup-samples: $wheel has SHA-256 $got, expected $WHEEL_SHA256" >&2
    exit 1
fi

tmp="$DEST.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
python3 - "$wheel" "$tmp" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
prefix = "pneumonia_model_package/datasets/pneumonia-data/val/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and name.endswith(".jpeg"):
            base = os.path.basename(name)
            with open(os.path.join(out, base), "wb") as f:
                f.write(z.read(name))
PY
(cd "$tmp" && sha256sum --quiet -c "$SUMS") || {
    echo "setup-samples: extracted images do not match $SUMS" >&2
    exit 1
}
cat > "$tmp/ATTRIBUTION.md" <<'MD'
# Sample chest X-rays

16 pediatric chest radiographs (8 NORMAL, 8 PNEUMONIA — file names `NORMAL2-*` and
`person*_bacteria_*`), the "val" split of:

Kermany, Daniel; Zhang, Kang; Goldbaum, Michael (2018), "Labeled Optical Coherence
Tomography (OCT) and Chest X-Ray Images for Classification", Mendeley Data, V2,
doi:10.17632/rscbjbr9sj.2 — licensed under Creative Commons Attribution 4.0
International (CC BY 4.0), https://creativecommons.org/licenses/by/4.0/

As shipped (JPEG, original resolution) in the PyPI package `pneumonia-model-package`
0.3.0 (`pneumonia_model_package/datasets/pneumonia-data/val/`). Changes: `duli demo` wraps
each image, unchanged, as a DICOM DX image with a fictitious patient and study header.
Not for clinical use.
MD
rm -rf "$DEST"
mv "$tmp" "$DEST"
rm -rf "$work"
echo "sample chest X-rays verified in $DEST"
