#!/usr/bin/env bash
# Checks, without BitBake, the configuration the appliance image seeds on first boot:
# the recipe's sed expressions applied to config/duli.toml give a configuration that
# `duli check-config` finds valid, that runs the signed model pack `model` (the name
# `duli firmware install` gives a pack by default) and names no model folder that the
# image does not have.
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$here"
recipe=$(ls yocto/meta-duli/recipes-duli/duli/duli_*.bb)
duli=${DULI_BIN:-target/debug/duli}
if [ ! -x "$duli" ]; then
    echo "seed-config: $duli not built (cargo build -p duli)" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The sed expressions of the command that writes ${datadir}/duli/duli.toml.
python3 - "$recipe" > "$work/seed.sed" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"sed((?:\s+-e\s+'[^']*'\s*\\?\n?)+)\s*\$\{S\}/config/duli\.toml", text)
if not m:
    sys.exit("seed-config: no sed command for config/duli.toml in the recipe")
for expr in re.findall(r"-e\s+'([^']*)'", m.group(1)):
    print(expr.replace("${localstatedir}", "/var"))
PY
sed -f "$work/seed.sed" config/duli.toml > "$work/duli.toml"
out=$("$duli" check-config --config "$work/duli.toml" 2>&1)
echo "$out" | head -1
grep -q '^model_pack = "model"$' <<<"$out" || { echo "FAIL: the seed runs no model pack"; echo "$out"; exit 1; }
# The model is the pack's manifest, unpacked under the data folder when it loads.
if grep '^model = ' <<<"$out" | grep -vq '^model = "/var/lib/duli/'; then
    echo "FAIL: the seed names a model outside the data folder:"; grep '^model = ' <<<"$out"; exit 1
fi
if grep -qi 'warning' <<<"$out"; then
    echo "FAIL: check-config warns:"; grep -i warning <<<"$out"; exit 1
fi
grep -q '^data_dir = "/var/lib/duli"$' <<<"$out" || { echo "FAIL: data_dir"; exit 1; }
echo "ok: the seeded configuration runs the signed model pack \"model\""
