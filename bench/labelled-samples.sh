#!/usr/bin/env bash
# Links the 16 labelled sample radiographs into NORMAL/ and PNEUMONIA/ under bench/out and
# prints that folder (what `duli evaluate` reads): SET=png (default) the shared PNGs
# (DULI_SHARED_DIR, ../shared or ../../shared; prints nothing when absent), SET=jpeg the
# same radiographs as the model's PyPI package ships them (scripts/setup-samples.sh).
# Used by bench-infer.sh and infer-throughput.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${SET:-png}" in
    jpeg)
        "$ROOT/scripts/setup-samples.sh" >/dev/null
        src="$ROOT/.cache/samples/cxr-jpeg"; ext=jpeg; out="$ROOT/bench/out/cxr16-jpeg" ;;
    png)
        src=""
        for c in "${DULI_SHARED_DIR:-}" "$ROOT/../shared" "$ROOT/../../shared"; do
            [[ -n "$c" && -d "$c/data/cxr-samples/png" ]] && { src="$(cd "$c/data/cxr-samples/png" && pwd)"; break; }
        done
        [[ -n "$src" ]] || exit 0
        ext=png; out="$ROOT/bench/out/cxr16" ;;
    *) echo "labelled-samples: SET is png or jpeg" >&2; exit 2 ;;
esac
rm -rf "$out"; mkdir -p "$out/NORMAL" "$out/PNEUMONIA"
for f in "$src"/*."$ext"; do
    n="$(basename "$f")"
    case "$n" in NORMAL*) ln -s "$f" "$out/NORMAL/$n" ;; *) ln -s "$f" "$out/PNEUMONIA/$n" ;; esac
done
echo "$out"
