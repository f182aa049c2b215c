#!/usr/bin/env bash
# Checks the persistent, bounded system journal of the appliance without booting it:
#  (the data partition's layout creating /data/log/journal as journald keeps its folder,
#  2755 root:systemd-journal, is checked with the rest of the layout in verify.sh)
#  1. var-volatile-log-journal.mount binds that folder where /var/log/journal resolves on
#     the image (/var/log is Yocto's link to volatile/log while VOLATILE_LOG_DIR is left
#     on), before the journal is flushed there, after the layout exists;
#  2. systemd/duli-journald.conf sets only keys journald knows (those of this system's
#     /etc/systemd/journald.conf), keeps the journal persistent and bounds its size.
# Skips (exit 0 with a message) without systemd-escape or this system's journald.conf.
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
skip() {
    echo "SKIP: $*"
    [ -z "${DULI_SKIP_LOG:-}" ] || echo "tests/systemd/journal.sh: $*" >> "$DULI_SKIP_LOG"
    exit 0
}
command -v systemd-escape >/dev/null 2>&1 || skip "systemd-escape not installed"

# 1. The bind mount.
unit="$here/systemd/var-volatile-log-journal.mount"
value() { sed -n "s/^$1=//p" "$unit"; }
[ "$(value What)" = /data/log/journal ] || { echo "FAIL: What=$(value What)"; exit 1; }
[ "$(value Where)" = /var/volatile/log/journal ] || { echo "FAIL: Where=$(value Where)"; exit 1; }
[ "$(systemd-escape -p --suffix=mount "$(value Where)")" = "$(basename "$unit")" ] ||
    { echo "FAIL: the unit's name is not its Where="; exit 1; }
value Before | grep -qw systemd-journal-flush.service ||
    { echo "FAIL: not ordered before the journal's flush"; exit 1; }
value After | grep -qw duli-data-layout.service ||
    { echo "FAIL: not ordered after the layout"; exit 1; }
grep -q '^Before=.*var-volatile-log-journal.mount' "$here/systemd/duli-data-layout.service" ||
    { echo "FAIL: duli-data-layout.service is not ordered before the journal's mount"; exit 1; }
if grep -q 'VOLATILE_LOG_DIR *= *"no"' "$here"/yocto/meta-duli/recipes-core/images/*.bb; then
    echo "FAIL: the image turns VOLATILE_LOG_DIR off: /var/log/journal is then on the read-only root"
    exit 1
fi
recipe=$(ls "$here"/yocto/meta-duli/recipes-duli/duli/duli_*.bb)
grep -q 'var-volatile-log-journal.mount' "$recipe" && grep -q 'duli-journald.conf' "$recipe" ||
    { echo "FAIL: the recipe does not install the journal's mount and settings"; exit 1; }

# 2. The journald settings.
conf="$here/systemd/duli-journald.conf"
reference=/etc/systemd/journald.conf
[ -f "$reference" ] || skip "no $reference to check the keys against"
grep -q '^\[Journal\]$' "$conf" || { echo "FAIL: no [Journal] section"; exit 1; }
while IFS='=' read -r key _; do
    grep -q "^#\?$key=" "$reference" || { echo "FAIL: journald knows no key $key"; exit 1; }
done < <(grep -E '^[A-Za-z]+=' "$conf")
for want in Storage=persistent SystemMaxUse= SystemKeepFree= MaxRetentionSec=; do
    grep -q "^$want" "$conf" || { echo "FAIL: $conf does not set $want"; exit 1; }
done
echo "journal: persistent on the data partition, bounded: ok"
