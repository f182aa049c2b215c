#!/usr/bin/env bash
# Writes a CycloneDX (JSON, spec 1.5) software bill of materials of the daemon binary `duli`
# (which carries the firmware updater too) into target/sbom/: every crate compiled into it
# with its version, licence, source and checksum (cargo cyclonedx, from Cargo.lock).
#
#   scripts/sbom.sh            (make sbom)
#
# Components outside Cargo (the OpenVINO runtime, the image's Debian/Yocto packages) are
# listed in docs/security.md.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="$repo/target/sbom"
mkdir -p "$out"
target="$(rustc -vV | sed -n 's/^host: //p')"
# cargo cyclonedx writes each SBOM beside its crate's Cargo.toml; collect them.
cargo cyclonedx --format json --spec-version 1.5 --describe binaries --target "$target" \
    --manifest-path "$repo/Cargo.toml"
found=0
while IFS= read -r -d '' f; do
    mv -f "$f" "$out/"
    found=$((found + 1))
done < <(find daemon firmware -maxdepth 1 -name '*.cdx.json' -print0)
[ "$found" -gt 0 ] || { echo "sbom: cargo cyclonedx wrote nothing" >&2; exit 1; }
for f in "$out"/*.cdx.json; do
    n=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(len(d.get("components", [])))' "$f")
    echo "sbom: $f ($n components)"
done
