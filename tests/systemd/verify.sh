#!/usr/bin/env bash
# Checks the unit files in systemd/ without systemd as PID 1:
#  1. stages a root tree (units in /usr/lib/systemd/system, a stand-in /usr/bin/duli,
#     sysusers/tmpfiles snippets) and runs `systemd-analyze verify --root`;
#  2. runs `systemd-analyze security --offline=true` on each service and fails when
#     duli.service's exposure is above DULI_MAX_EXPOSURE (default 2.0, i.e. "OK").
# Skips (exit 0 with a message) when systemd-analyze is absent.
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
max_exposure="${DULI_MAX_EXPOSURE:-2.0}"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP: systemd-analyze not installed"
    [ -z "${DULI_SKIP_LOG:-}" ] || echo "tests/systemd/verify.sh: systemd-analyze not installed" >> "$DULI_SKIP_LOG"
    exit 0
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
units="$root/usr/lib/systemd/system"
mkdir -p "$units" "$root/usr/bin" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" \
    "$root/etc/duli" "$root/etc/systemd/system/duli.service.d" "$root/var/lib/duli/firmware"
all_units="duli.service duli-update.service duli-update.path duli-mark-good.service data.mount \
    duli-data-layout.service var-lib-duli.mount etc-duli.mount etc-systemd-timesyncd.conf.d.mount"
for unit in $all_units; do
    cp "$here/systemd/$unit" "$units/"
done
cp "$here/systemd/duli.sysusers" "$root/usr/lib/sysusers.d/duli.conf"
cp "$here/systemd/duli.tmpfiles" "$root/usr/lib/tmpfiles.d/duli.conf"
mkdir -p "$root/usr/lib/duli" "$root/usr/share/duli"
cp "$here/systemd/duli-data-layout.conf" "$root/usr/lib/duli/data-layout.conf"
cp "$here/config/duli.toml" "$root/usr/share/duli/duli.toml"
cp "$here/systemd/duli-timesyncd.conf" "$root/usr/share/duli/timesyncd.conf"
# Stand-in for the installed binary: verify only checks that ExecStart= exists and runs.
printf '#!/bin/sh\nexit 0\n' > "$root/usr/bin/duli"
chmod 755 "$root/usr/bin/duli"
cp "$root/usr/bin/duli" "$root/usr/bin/systemd-tmpfiles"
# Units referenced by the ones under test, so verify can load the dependency graph.
cp /usr/lib/systemd/system/{network-online.target,time-sync.target,multi-user.target,basic.target,sysinit.target,shutdown.target,reboot.target} "$units/" 2>/dev/null || true

echo "== systemd-analyze verify --root"
mapfile -t unit_paths < <(for u in $all_units; do echo "$units/$u"; done)
out="$(systemd-analyze verify --root="$root" "${unit_paths[@]}" 2>&1)" \
    || { echo "$out"; echo "FAIL: verify"; exit 1; }
# verify prints warnings without failing; any line naming our units is a finding.
if echo "$out" | grep -E 'duli' ; then
    echo "FAIL: systemd-analyze verify reported findings for the units above"
    exit 1
fi
echo "ok"

echo "== sysusers / tmpfiles syntax"
systemd-sysusers --root="$root" "$root/usr/lib/sysusers.d/duli.conf" >/dev/null 2>&1
grep -q '^duli:' "$root/etc/passwd" || { echo "FAIL: sysusers did not create duli"; exit 1; }
systemd-tmpfiles --root="$root" --create "$root/usr/lib/tmpfiles.d/duli.conf"
test "$(stat -c '%a %U' "$root/var/lib/duli/firmware" 2>/dev/null | cut -d' ' -f1)" = 750 \
    || { echo "FAIL: tmpfiles did not create /var/lib/duli/firmware 0750"; exit 1; }
echo "ok"

echo "== data partition layout (duli-data-layout.service's tmpfiles lines)"
# What the service does at boot, on the staged tree: the bind mounts' sources, the seeded
# configuration, and a provisioned configuration left alone on the next boot.
systemd-tmpfiles --root="$root" --create "$root/usr/lib/duli/data-layout.conf"
# Owners by number, named through the staged tree's own passwd/group (not the host's).
uid_of() { [ "$1" = root ] && echo 0 || awk -F: -v n="$1" '$1 == n { print $3 }' "$root/etc/passwd"; }
gid_of() { [ "$1" = root ] && echo 0 || awk -F: -v n="$1" '$1 == n { print $3 }' "$root/etc/group"; }
check_mode() {
    local want="$2 $(uid_of "$3"):$(gid_of "$4")"
    test "$(stat -c '%a %u:%g' "$root$1")" = "$want" \
        || { echo "FAIL: $1 is $(stat -c '%a %u:%g' "$root$1"), want $want ($3:$4)"; exit 1; }
}
check_mode /data/etc 755 root root
check_mode /data/etc/duli 750 root duli
check_mode /data/duli 750 duli duli
cmp -s "$root/data/etc/duli/duli.toml" "$here/config/duli.toml" \
    || { echo "FAIL: /data/etc/duli/duli.toml not seeded from the image's default"; exit 1; }
cmp -s "$root/data/etc/timesyncd.conf.d/duli.conf" "$here/systemd/duli-timesyncd.conf" \
    || { echo "FAIL: the NTP drop-in not seeded"; exit 1; }
test "$(readlink "$root/data/etc/localtime")" = /usr/share/zoneinfo/UTC \
    || { echo "FAIL: /data/etc/localtime is not a link to UTC"; exit 1; }
test "$(cat "$root/data/etc/timezone")" = UTC || { echo "FAIL: /data/etc/timezone is not UTC"; exit 1; }
echo '# provisioned' > "$root/data/etc/duli/duli.toml"
systemd-tmpfiles --root="$root" --create "$root/usr/lib/duli/data-layout.conf"
grep -q '^# provisioned' "$root/data/etc/duli/duli.toml" \
    || { echo "FAIL: the seed overwrote a provisioned configuration"; exit 1; }
for m in var-lib-duli etc-duli etc-systemd-timesyncd.conf.d; do
    grep -q '^Requires=duli-data-layout.service' "$units/$m.mount" \
        || { echo "FAIL: $m.mount does not require the layout service"; exit 1; }
done
grep -qx 'What=/data/etc/duli' "$units/etc-duli.mount" && grep -qx 'Where=/etc/duli' "$units/etc-duli.mount" \
    || { echo "FAIL: etc-duli.mount does not bind /data/etc/duli to /etc/duli"; exit 1; }
echo "ok"

# exposure UNIT: prints the report's findings and sets $score.
exposure() {
    local report
    report="$(systemd-analyze security --offline=true --root="$root" "$units/$1" 2>&1 || true)"
    score="$(echo "$report" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p' | tail -1)"
    echo "$1: exposure ${score:-?} $(echo "$report" | tail -1 | sed 's/.*[0-9] //')"
    if [ "${2:-}" = details ]; then
        echo "$report" | grep -E '^✗' | sed 's/^/    /' || true
    fi
}
above() { [ -z "$1" ] || awk -v s="$1" -v m="$max_exposure" 'BEGIN{exit !(s>m)}'; }

echo "== systemd-analyze security --offline=true (threshold $max_exposure for duli.service)"
status=0
exposure duli.service details
if above "$score"; then
    echo "FAIL: duli.service exposure ${score:-unknown} is above $max_exposure"
    status=1
fi
exposure duli-update.service
exposure duli-mark-good.service

echo "== with the port-104 drop-in"
cp "$here/systemd/duli-port104.conf" "$root/etc/systemd/system/duli.service.d/port104.conf"
exposure duli.service
if above "$score"; then
    echo "FAIL: duli.service with port104.conf: exposure ${score:-unknown} is above $max_exposure"
    status=1
fi
[ $status = 0 ] && echo "ok"
exit $status
