#!/usr/bin/env bash
# Checks the unit files in systemd/ without systemd as PID 1:
#  1. stages a root tree (units in /usr/lib/systemd/system, a stand-in /usr/bin/duli,
#     sysusers/tmpfiles snippets) and runs `systemd-analyze verify --root`;
#  2. runs `systemd-analyze security --offline=true` on each service and fails when
#     duli.service's exposure is above DULI_MAX_EXPOSURE (default 2.0, i.e. "OK"), or
#     duli-update.service's or duli-mark-good.service's is above DULI_MAX_ROOT_EXPOSURE
#     (default 2.0: they run as root, their ceiling is the same);
#  3. checks the root units' narrowing (device list, loopback only, hidden /proc, umask)
#     and the mark-good wrapper (systemd/duli-mark-good.sh): a failure reaches the unit
#     only on a trial boot.
# Skips (exit 0 with a message) when systemd-analyze is absent.
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
max_exposure="${DULI_MAX_EXPOSURE:-2.0}"
max_root_exposure="${DULI_MAX_ROOT_EXPOSURE:-2.0}"

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
    duli-data-layout.service var-lib-duli.mount etc-duli.mount etc-systemd-timesyncd.conf.d.mount \
    var-volatile-log-journal.mount boot.mount"
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
install -m 0755 "$here/systemd/duli-mark-good.sh" "$root/usr/lib/duli/mark-good"
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
# The journal's group, which the image's systemd creates (its basic.conf) and the layout's
# journal folder is given.
printf 'g systemd-journal -\n' > "$root/usr/lib/sysusers.d/basic.conf"
systemd-sysusers --root="$root" "$root/usr/lib/sysusers.d/basic.conf" >/dev/null 2>&1
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
check_mode /data/log/journal 2755 root systemd-journal
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

echo "== root units: narrowed as documented"
has() { grep -qx -- "$2" "$units/$1" || { echo "FAIL: $1 lacks the line: $2"; exit 1; }; }
for unit in duli.service duli-update.service duli-mark-good.service; do
    grep -qE '^RequiresMountsFor=.*/etc/duli' "$units/$unit" && grep -qE '^RequiresMountsFor=.*/var/lib/duli' "$units/$unit" \
        || { echo "FAIL: $unit does not require the mounts of /etc/duli and /var/lib/duli"; exit 1; }
done
for unit in duli-update.service duli-mark-good.service; do
    has "$unit" ProtectProc=invisible
done
has duli-mark-good.service UMask=0077
has duli-update.service UMask=0022
has duli-update.service DevicePolicy=closed
has duli-update.service 'DeviceAllow=/dev/disk/by-partlabel/rootfs-a rw'
has duli-update.service 'DeviceAllow=/dev/disk/by-partlabel/rootfs-b rw'
test "$(grep -c '^DeviceAllow=' "$units/duli-update.service")" = 2 \
    || { echo "FAIL: duli-update.service allows more devices than the two slots"; exit 1; }
has duli-mark-good.service RestrictAddressFamilies=AF_UNIX
has duli-mark-good.service IPAddressDeny=any
has duli-mark-good.service PrivateDevices=yes
has duli-mark-good.service PrivateNetwork=yes
has duli-update.service IPAddressDeny=any
has duli-mark-good.service FailureAction=reboot
has duli-mark-good.service SuccessExitStatus=75
grep -q '^ExecStart=/usr/lib/duli/mark-good ' "$units/duli-mark-good.service" \
    || { echo "FAIL: duli-mark-good.service does not run the wrapper"; exit 1; }
echo "ok"

echo "== mark-good wrapper: a failure reaches FailureAction=reboot only on a trial boot"
w="$root/wrapper"
mkdir -p "$w"
# A stand-in for duli that exits with $FAKE_STATUS.
printf '#!/bin/sh
exit "${FAKE_STATUS:-0}"
' > "$w/duli"
chmod 755 "$w/duli"
env_block() { { printf '# GRUB Environment Block\n'; for v in "$@"; do printf '%s\n' "$v"; done; } > "$w/grubenv"; }
# wrapper STATUS CMDLINE -> prints the wrapper's exit status
wrapper() {
    printf '%s\n' "$2" > "$w/cmdline"
    local rc=0
    FAKE_STATUS="$1" DULI="$w/duli" DULI_CMDLINE="$w/cmdline" DULI_GRUBENV="$w/grubenv" \
        sh "$here/systemd/duli-mark-good.sh" --health-check 2>/dev/null || rc=$?
    echo "$rc"
}
expect() { [ "$1" = "$2" ] || { echo "FAIL: mark-good wrapper, $3: exit $1, want $2"; exit 1; }; }
env_block duli_active=A duli_target=B duli_attempts=2
expect "$(wrapper 0 'root=PARTLABEL=rootfs-B ro duli.slot=B')" 0 "trial boot, success"
expect "$(wrapper 4 'root=PARTLABEL=rootfs-B ro duli.slot=B')" 4 "trial boot, failed health check"
expect "$(wrapper 1 'root=PARTLABEL=rootfs-A ro duli.slot=A')" 75 "committed slot A, configuration unreadable"
env_block duli_active=B duli_target=B duli_attempts=0
expect "$(wrapper 1 'quiet duli.slot=B')" 75 "committed slot B, error"
expect "$(wrapper 1 'duli.slot=A quiet')" 1 "trial boot of A from B, error"
env_block duli_target=A
expect "$(wrapper 1 'duli.slot=A')" 75 "no duli_active (A, as in grub.cfg), error"
expect "$(wrapper 1 'duli.slot=B')" 1 "no duli_active (A), booted B, error"
expect "$(wrapper 1 'root=/dev/sda2 ro')" 75 "no duli.slot= on the command line"
rm -f "$w/grubenv"
expect "$(PATH=/usr/bin:/bin wrapper 1 'duli.slot=B')" 75 "boot variables unreadable"
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
above() { [ -z "$1" ] || awk -v s="$1" -v m="${2:-$max_exposure}" 'BEGIN{exit !(s>m)}'; }

echo "== systemd-analyze security --offline=true (threshold $max_exposure for duli.service, $max_root_exposure for the root units)"
status=0
exposure duli.service details
if [ -z "$score" ] || above "$score"; then
    echo "FAIL: duli.service exposure ${score:-unknown} is above $max_exposure"
    status=1
fi
for unit in duli-update.service duli-mark-good.service; do
    exposure "$unit" details
    if [ -z "$score" ] || above "$score" "$max_root_exposure"; then
        echo "FAIL: $unit exposure ${score:-unknown} is above $max_root_exposure"
        status=1
    fi
done

echo "== with the port-104 drop-in"
cp "$here/systemd/duli-port104.conf" "$root/etc/systemd/system/duli.service.d/port104.conf"
exposure duli.service
if above "$score"; then
    echo "FAIL: duli.service with port104.conf: exposure ${score:-unknown} is above $max_exposure"
    status=1
fi
[ $status = 0 ] && echo "ok"
exit $status
