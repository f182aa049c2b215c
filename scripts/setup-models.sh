#!/usr/bin/env bash
# Puts the default model's weights in models/pneumonia-xception/ (they are never committed):
# copies the OpenVINO IR from the shared folder when present (DULI_SHARED_DIR, else ../shared or
# ../../shared from the repository root), otherwise rebuilds it from its PyPI source with
# models/pneumonia-xception/rebuild.sh. Either way every file must hash to model.toml's
# SHA-256, or the script fails. Idempotent: files that already match are left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/models/pneumonia-xception"
MANIFEST="$DEST/model.toml"

# "<file> <sha256>" pairs from the manifest's [file] table.
expected() {
    python3 - "$MANIFEST" <<'PY'
import sys, tomllib
m = tomllib.load(open(sys.argv[1], "rb"))["file"]
print(m["path"], m["sha256"])
if "weights" in m:
    print(m["weights"], m["weights_sha256"])
PY
}

verify() {  # verify DIR -> 0 when every file matches
    local dir="$1" ok=0
    while read -r name sum; do
        if [[ ! -f "$dir/$name" ]] || [[ "$(sha256sum "$dir/$name" | cut -d' ' -f1)" != "$sum" ]]; then
            ok=1
        fi
    done < <(expected)
    return $ok
}

if verify "$DEST"; then
    echo "pneumonia-xception weights present and verified in $DEST"
    exit 0
fi

SHARED="${DULI_SHARED_DIR:-}"
if [[ -z "$SHARED" ]]; then
    for c in "$ROOT/../shared" "$ROOT/../../shared"; do
        [[ -d "$c/models" ]] && { SHARED="$(cd "$c" && pwd)"; break; }
    done
fi
SRC="${SHARED:+$SHARED/models/pneumonia-xception}"

if [[ -n "$SRC" && -d "$SRC" ]]; then
    echo "copying pneumonia-xception IR from $SRC"
    while read -r name _; do
        cp -f "$SRC/$name" "$DEST/$name.tmp" && mv -f "$DEST/$name.tmp" "$DEST/$name"
    done < <(expected)
else
    echo "no shared model folder found: rebuilding the IR from PyPI (takes a while)"
    "$DEST/rebuild.sh"
fi

if ! verify "$DEST"; then
    echo "setup-models: pneumonia-xception files do not match the SHA-256 in $MANIFEST" >&2
    while read -r name sum; do
        echo "  $name: expected $sum, got $(sha256sum "$DEST/$name" 2>/dev/null | cut -d' ' -f1)" >&2
    done < <(expected)
    exit 1
fi
echo "pneumonia-xception weights verified in $DEST"
