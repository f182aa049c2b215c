#!/usr/bin/env bash
# Runs duli-image.bb's enable_duli_time_wait_sync (the root filesystem step that makes
# time-sync.target wait for a synchronised clock, systemd/README.md "Time at start")
# without BitBake, against a stand-in root filesystem:
#  1. with systemd-time-wait-sync.service present, the unit is enabled (the link
#     `systemctl enable` makes, from its WantedBy=sysinit.target) and its wait bounded by a
#     drop-in that systemd parses (systemd-analyze verify, when present);
#  2. without the unit, the step fails the build (bbfatal) and enables nothing.
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
image="$here/yocto/meta-duli/recipes-core/images/duli-image.bb"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

grep -q 'ROOTFS_POSTPROCESS_COMMAND:append = .*enable_duli_time_wait_sync;' "$image" ||
    { echo "FAIL: duli-image.bb does not run enable_duli_time_wait_sync"; exit 1; }

# The shell function as BitBake would run it, its variables given.
python3 - "$image" > "$work/step.sh" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"^enable_duli_time_wait_sync\(\) \{\n(.*?)^\}", text, re.S | re.M)
if not m:
    sys.exit("FAIL: no enable_duli_time_wait_sync() in duli-image.bb")
body = m.group(1)
for var, value in (("IMAGE_ROOTFS", '"$IMAGE_ROOTFS"'),
                   ("systemd_system_unitdir", "/usr/lib/systemd/system"),
                   ("sysconfdir", "/etc")):
    body = body.replace("${%s}" % var, value)
leftover = re.findall(r"\$\{[a-zA-Z_]+\}", body)
if leftover:
    sys.exit("FAIL: unknown BitBake variables in the step: %s" % leftover)
print("bbfatal() { echo \"bbfatal: $*\" >&2; exit 1; }")
print("set -e")
print(body)
PY

# 1. The unit present.
root="$work/rootfs"
mkdir -p "$root/usr/lib/systemd/system"
cat > "$root/usr/lib/systemd/system/systemd-time-wait-sync.service" <<'UNIT'
[Unit]
Description=Wait Until Kernel Time Synchronized
[Service]
Type=oneshot
ExecStart=/usr/lib/systemd/systemd-time-wait-sync
TimeoutStartSec=infinity
[Install]
WantedBy=sysinit.target
UNIT
IMAGE_ROOTFS="$root" bash "$work/step.sh"
link="$root/etc/systemd/system/sysinit.target.wants/systemd-time-wait-sync.service"
[ -L "$link" ] && [ "$(readlink "$link")" = /usr/lib/systemd/system/systemd-time-wait-sync.service ] ||
    { echo "FAIL: the unit is not enabled: $(ls -l "$link" 2>&1)"; exit 1; }
dropin="$root/etc/systemd/system/systemd-time-wait-sync.service.d/duli.conf"
[ "$(cat "$dropin")" = "$(printf '[Service]\nTimeoutStartSec=90s')" ] ||
    { echo "FAIL: the drop-in reads: $(cat "$dropin" 2>&1)"; exit 1; }
if command -v systemd-analyze >/dev/null 2>&1; then
    # The drop-in as systemd reads it: the bound is the unit's start timeout.
    out="$(systemd-analyze --root="$root" cat-config systemd/system/systemd-time-wait-sync.service.d/duli.conf 2>&1 || true)"
    grep -q '^TimeoutStartSec=90s$' <<<"$out" || { echo "FAIL: systemd does not read the drop-in: $out"; exit 1; }
fi
# Run twice (a rebuilt image): the same result, no error.
IMAGE_ROOTFS="$root" bash "$work/step.sh"
echo "ok: systemd-time-wait-sync enabled, its wait bounded to 90 s"

# 2. The unit missing: the build stops, nothing is enabled.
bare="$work/bare"
mkdir -p "$bare/usr/lib/systemd/system"
if out="$(IMAGE_ROOTFS="$bare" bash "$work/step.sh" 2>&1)"; then
    echo "FAIL: the step passed without the unit"; exit 1
fi
grep -q 'bbfatal: duli-image: .*systemd-time-wait-sync.service is missing' <<<"$out" ||
    { echo "FAIL: unexpected failure: $out"; exit 1; }
[ ! -e "$bare/etc/systemd/system/sysinit.target.wants" ] ||
    { echo "FAIL: something was enabled without the unit"; exit 1; }
echo "ok: without the unit the image build stops"
