#!/usr/bin/env bash
# Fetches the OpenVINO runtime libraries from the pinned PyPI `openvino` wheel and unpacks
# them into .cache/openvino/libs (repo root), with the unversioned libopenvino_c.so symlink
# the loader looks for. Idempotent: a second run only checks the stamp file.
#
# The 2026 wheels are tagged manylinux_2_28 (glibc >= 2.28).
# Needs: python3 with pip (only `pip download` is used: no venv, nothing is installed).
# Env: OPENVINO_VERSION (default pinned below), DULI_CACHE (default <repo>/.cache).
set -euo pipefail

VERSION="${OPENVINO_VERSION:-2026.4.1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${DULI_CACHE:-$ROOT/.cache}"
DEST="$CACHE/openvino"
LIBS="$DEST/libs"
STAMP="$DEST/.version"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$VERSION" && -e "$LIBS/libopenvino_c.so" ]]; then
    echo "openvino $VERSION runtime present in $LIBS"
    exit 0
fi

case "$(uname -m)" in
    x86_64) PLATFORM=manylinux_2_28_x86_64 ;;
    aarch64) PLATFORM=manylinux_2_28_aarch64 ;;
    *) echo "setup-openvino: no openvino wheel for $(uname -m)" >&2; exit 1 ;;
esac

PY="${PYTHON:-python3}"
source "$ROOT/scripts/python-ready.sh"
ensure_python pip

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "downloading openvino==$VERSION ($PLATFORM, cp311) from PyPI"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --platform "$PLATFORM" \
    --dest "$TMP" "openvino==$VERSION"
WHEEL="$(ls "$TMP"/openvino-"$VERSION"-*.whl 2>/dev/null | head -n1)"
[[ -n "$WHEEL" ]] || { echo "setup-openvino: download produced no wheel" >&2; exit 1; }

"$PY" - "$WHEEL" "$TMP/unpacked" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith("openvino/libs/")]
    if not members:
        sys.exit("setup-openvino: wheel has no openvino/libs/")
    z.extractall(out, members)
PY

rm -rf "$LIBS.new"
mkdir -p "$DEST"
mv "$TMP/unpacked/openvino/libs" "$LIBS.new"
C_LIB="$(cd "$LIBS.new" && ls libopenvino_c.so.* 2>/dev/null | sort | head -n1)"
[[ -n "$C_LIB" ]] || { echo "setup-openvino: libopenvino_c.so.* missing from the wheel" >&2; exit 1; }
# The symlink must sit beside the libraries: they find each other relative to it.
ln -sf "$C_LIB" "$LIBS.new/libopenvino_c.so"
rm -rf "$LIBS"
mv "$LIBS.new" "$LIBS"
echo "$VERSION" > "$STAMP"
echo "openvino $VERSION runtime unpacked into $LIBS ($C_LIB)"
