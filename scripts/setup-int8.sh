#!/usr/bin/env bash
# Builds the INT8 network of the default model: post-training quantization of its IR with
# NNCF (pinned, from PyPI) in a private venv, calibrated on the 16 shared labelled chest
# X-rays (../shared/data/cxr-samples/png, else the same images from the model's PyPI
# package in .cache/samples/cxr-jpeg), keeping the operations listed in the model's
# int8-float-ops.txt in floating point, into .cache/models/<name>/int8/ with its build
# record int8.json. Never committed: the source weights carry no licence.
# The record names the source IR by the SHA-256 of its .xml and of its weights (the .xml
# describes structure only: retrained weights keep its checksum); the daemon refuses a
# build whose source is not the manifest's, and this script rebuilds it.
# Idempotent: a build whose record matches the manifest's IR (.xml and weights) and its
# own files is kept.
# DULI_SKIP_INT8=1 skips it (the int8 precision then reports the build missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MANIFEST="${1:-$ROOT/models/pneumonia-xception/model.toml}"
NNCF_VERSION="3.4.0"
[[ "${DULI_SKIP_INT8:-}" == 1 ]] && { echo "setup-int8: skipped (DULI_SKIP_INT8=1)"; exit 0; }

NAME="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["name"])' "$MANIFEST")"
OUT="$ROOT/.cache/models/$NAME/int8"
RECIPE="$(sed -n 's/^RECIPE = "\(.*\)"$/\1/p' "$ROOT/scripts/quantize-int8.py")"

current() {  # 0 when OUT holds a build of the manifest's IR whose files match its record
    [[ -f "$OUT/int8.json" ]] || return 1
    python3 - "$MANIFEST" "$OUT" "$RECIPE" <<'PY'
import hashlib, json, sys, tomllib
from pathlib import Path
m = tomllib.load(open(sys.argv[1], "rb"))
out = Path(sys.argv[2])
r = json.loads((out / "int8.json").read_text())
def sha(p): return hashlib.sha256(p.read_bytes()).hexdigest()
ops = Path(sys.argv[1]).parent / "int8-float-ops.txt"
ok = (r.get("recipe") == sys.argv[3] and r["source_sha256"] == m["file"]["sha256"]
      and r.get("source_weights_sha256") == m["file"].get("weights_sha256")
      and r.get("float_ops_sha256") == (sha(ops) if ops.is_file() else None)
      and (out / r["xml"]).is_file() and sha(out / r["xml"]) == r["xml_sha256"]
      and (out / r["bin"]).is_file() and sha(out / r["bin"]) == r["bin_sha256"])
sys.exit(0 if ok else 1)
PY
}

if current; then
    echo "INT8 build of $NAME present and verified in $OUT"
    exit 0
fi

SAMPLES=()
for c in "${DULI_SHARED_DIR:-}" "$ROOT/../shared" "$ROOT/../../shared"; do
    if [[ -n "$c" && -d "$c/data/cxr-samples/png" ]]; then
        mapfile -t SAMPLES < <(ls "$c"/data/cxr-samples/png/*.png)
        break
    fi
done
if [[ ${#SAMPLES[@]} -eq 0 ]]; then
    "$ROOT/scripts/setup-samples.sh" >/dev/null
    mapfile -t SAMPLES < <(ls "$ROOT"/.cache/samples/cxr-jpeg/*.jpeg)
fi

OV_VERSION="$(cat "$ROOT/.cache/openvino/.version")"
VENV="$ROOT/.cache/quantize/venv"
if ! "$VENV/bin/python" -c "import nncf, openvino, PIL, sys; sys.exit(nncf.__version__ != '$NNCF_VERSION' or openvino.__version__.split('-')[0] != '$OV_VERSION')" 2>/dev/null; then
    echo "setup-int8: installing nncf==$NNCF_VERSION, openvino==$OV_VERSION into $VENV"
    source "$ROOT/scripts/python-ready.sh"
    PYTHON=python3 ensure_python venv
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "openvino==$OV_VERSION" "nncf==$NNCF_VERSION" numpy pillow
fi

# The source weights must be the manifest's before and after quantizing (the quantizer
# checks the .xml); the build record then names them.
source_weights() {
    python3 - "$MANIFEST" <<'PY'
import hashlib, sys, tomllib
from pathlib import Path
path = Path(sys.argv[1])
f = tomllib.load(open(path, "rb"))["file"]
if "weights" not in f:
    sys.exit(0)
w = path.parent / f["weights"]
actual = hashlib.sha256(w.read_bytes()).hexdigest() if w.is_file() else "missing"
if actual != f.get("weights_sha256"):
    sys.exit(f"setup-int8: {w} has SHA-256 {actual}, the manifest says {f.get('weights_sha256')}")
print(actual)
PY
}
WEIGHTS_BEFORE="$(source_weights)"

echo "setup-int8: quantizing $NAME on ${#SAMPLES[@]} calibration images"
TMP="$OUT.partial"
rm -rf "$TMP"
"$VENV/bin/python" "$ROOT/scripts/quantize-int8.py" "$MANIFEST" "$TMP" "${SAMPLES[@]}"
[[ "$(source_weights)" == "$WEIGHTS_BEFORE" ]] || {
    echo "setup-int8: the source weights changed while quantizing" >&2; exit 1; }
python3 - "$TMP/int8.json" "$WEIGHTS_BEFORE" <<'PY'
import json, sys
from pathlib import Path
path = Path(sys.argv[1])
r = json.loads(path.read_text())
r["source_weights_sha256"] = sys.argv[2] or None
path.write_text(json.dumps(r, indent=2) + "\n")
PY
# Gate records stay: each binds the checksums of the network (.xml and weights) it
# gated, so one of an older build is simply not honoured.
if [[ -d "$OUT" ]]; then
    find "$OUT" -maxdepth 1 -name 'gate-*.json' -exec cp -p {} "$TMP/" \;
fi
rm -rf "$OUT"
mv "$TMP" "$OUT"
current || { echo "setup-int8: the new build does not verify" >&2; exit 1; }
echo "INT8 build of $NAME verified in $OUT"
