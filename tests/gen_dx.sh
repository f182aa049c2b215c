#!/usr/bin/env bash
# The benchmark's DX generator writes valid Part 10 files with the promised header.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$repo/.venv/bin/python"
if [ ! -x "$python" ] || ! command -v dcmdump >/dev/null; then
    echo "SKIP: .venv or dcmdump absent"
    [ -z "${DULI_SKIP_LOG:-}" ] || echo "tests/gen_dx.sh: .venv or dcmdump absent" >> "$DULI_SKIP_LOG"
    exit 0
fi
dir="$(mktemp -d)"; trap 'rm -rf "$dir"' EXIT
"$python" "$repo/bench/gen_dx.py" "$dir" 3 --rows 128 --cols 96 >/dev/null
[ "$(ls "$dir"/*.dcm | wc -l)" -eq 3 ]
dump="$(dcmdump -q "$dir/dx00001.dcm")"
for want in '=DigitalXRayImageStorageForPresentation' 'LittleEndianExplicit' \
    '(0028,0010) US 128' '(0028,0011) US 96' '(0028,0101) US 12' \
    '(7fe0,0010) OW' '(0008,0068) CS [FOR PRESENTATION]'; do
    grep -qF -- "$want" <<<"$dump" || { echo "gen_dx: missing $want"; exit 1; }
done
# Two views per study: files 0 and 1 share the study, file 2 starts another.
study() { dcmdump -q +P StudyInstanceUID "$1"; }
[ "$(study "$dir/dx00000.dcm")" = "$(study "$dir/dx00001.dcm")" ]
[ "$(study "$dir/dx00001.dcm")" != "$(study "$dir/dx00002.dcm")" ]
grep -q '\[2\.25\.' <<<"$(study "$dir/dx00000.dcm")"
echo "gen_dx: ok"
