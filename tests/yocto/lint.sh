#!/usr/bin/env bash
# Checks the Yocto layer without BitBake:
#  1. yocto/meta-duli/recipes-duli/duli/duli-crates.inc matches Cargo.lock
#     (regenerate with yocto/scripts/gen-crates-inc.py);
#  2. every recipe passes oelint-adv (PyPI) with no finding at any severity.
# oelint-adv is taken from $OELINT, else PATH, else the repository's .venv; when
# none exists the lint step is skipped with a message (the .inc check always runs).
#
# Rules suppressed for the whole layer, and why:
#   oelint.var.suggestedvar.BUGTRACKER  the project has no public issue tracker
#   oelint.var.bbclassextend            target-only recipes: no native/nativesdk variant
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$here"

echo "== crates .inc against Cargo.lock"
python3 yocto/scripts/gen-crates-inc.py --check

oelint="${OELINT:-}"
if [ -z "$oelint" ]; then
    if command -v oelint-adv >/dev/null 2>&1; then
        oelint="$(command -v oelint-adv)"
    elif [ -x .venv/bin/oelint-adv ]; then
        oelint=.venv/bin/oelint-adv
    else
        echo "SKIP: oelint-adv not installed (python3 -m venv V && V/bin/pip install oelint-adv)"
        [ -z "${DULI_SKIP_LOG:-}" ] || echo "tests/yocto/lint.sh: oelint-adv not installed" >> "$DULI_SKIP_LOG"
        exit 0
    fi
fi

echo "== oelint-adv $("$oelint" --version)"
mapfile -t recipes < <(find yocto/meta-duli -name '*.bb' -o -name '*.bbappend' -o -name '*.inc' | sort)
findings="$("$oelint" --quiet --mode all \
    --suppress oelint.var.suggestedvar.BUGTRACKER \
    --suppress oelint.var.bbclassextend \
    "${recipes[@]}" 2>&1 || true)"
if [ -n "$findings" ]; then
    echo "$findings"
    echo "FAIL: oelint-adv findings above"
    exit 1
fi
echo "ok: ${#recipes[@]} files, no findings"
