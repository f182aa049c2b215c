#!/usr/bin/env bash
# Checks, without BitBake, that the appliance image cannot be logged into without a
# password (yocto/README.md, "Logins"):
#  1. duli-image.bb removes every feature that allows an empty or root login
#     (allow-empty-password, empty-root-password, allow-root-login, serial-autologin-root,
#     debug-tweaks) from IMAGE_FEATURES and EXTRA_IMAGE_FEATURES, locks root through
#     extrausers (usermod -L root), checks the finished root filesystem
#     (duli_check_accounts), and its anonymous function stops the build when a forbidden
#     feature is still set: the function is run here against stand-ins for `d` and `bb`;
#  2. no other file of the layer adds one of those features;
#  3. the kernel command lines (grub.cfg, boot.cmd) carry nothing that opens a shell
#     without root's password (init=, SYSTEMD_SULOGIN_FORCE, systemd.debug_shell, rd.shell);
#  4. GRUB's entries cannot be edited nor its command line opened at the console
#     (superusers set, no password defined, every entry --unrestricted), and grub.cfg
#     parses (grub-script-check);
#  5. a trial slot that cannot reach mark-good still falls back unattended, and a slot an
#     update wrote mounts /boot: both kernel command lines reboot after a panic
#     (panic=N), the image lets systemd feed the hardware watchdog (RuntimeWatchdogSec),
#     and /boot comes from boot.mount, installed for GRUB machines, not from an fstab
#     line only the first disk image carries (--no-fstab-update in duli-ab.wks).
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$here"
layer=yocto/meta-duli
image=$layer/recipes-core/images/duli-image.bb

python3 - "$image" <<'PY'
import re
import sys

path = sys.argv[1]
text = open(path).read()
# BitBake continues a value on the next line after a backslash.
joined = re.sub(r"\\\n\s*", " ", text)
problems = []

def assignment(name, op="="):
    m = re.search(r"^%s\s*%s\s*\"([^\"]*)\"" % (re.escape(name), re.escape(op)), joined, re.M)
    return m.group(1) if m else None

wanted = {"allow-empty-password", "empty-root-password", "allow-root-login",
          "serial-autologin-root", "debug-tweaks"}
forbidden = set((assignment("DULI_FORBIDDEN_IMAGE_FEATURES") or "").split())
if not wanted <= forbidden:
    problems.append("DULI_FORBIDDEN_IMAGE_FEATURES lacks %s" % " ".join(sorted(wanted - forbidden)))
for var in ("IMAGE_FEATURES:remove", "EXTRA_IMAGE_FEATURES:remove"):
    if assignment(var) != "${DULI_FORBIDDEN_IMAGE_FEATURES}":
        problems.append('%s = "${DULI_FORBIDDEN_IMAGE_FEATURES}" missing' % var)
if not re.search(r"^inherit\b.*\bextrausers\b", joined, re.M):
    problems.append("extrausers is not inherited")
if "usermod -L root;" not in (assignment("EXTRA_USERS_PARAMS") or ""):
    problems.append('EXTRA_USERS_PARAMS = "usermod -L root;" missing')
if not re.search(r'^IMAGE_PREPROCESS_COMMAND:append\s*=\s*"[^"]*\bduli_check_accounts\b', joined, re.M):
    problems.append("duli_check_accounts is not in IMAGE_PREPROCESS_COMMAND")
m = re.search(r"^duli_check_accounts\(\) \{\n(.*?)^\}", text, re.M | re.S)
if not m or "bbfatal" not in m.group(1) or "'!'*" not in m.group(1):
    problems.append("duli_check_accounts does not fail on an unlocked root")
for m in re.finditer(r'^(?:EXTRA_)?IMAGE_FEATURES(?::append|:prepend)?\s*[+.:?]*=\s*"([^"]*)"', joined, re.M):
    added = wanted & set(m.group(1).split())
    if added:
        problems.append("a feature line adds %s: %s" % (" ".join(sorted(added)), m.group(0)))

# The anonymous function, run against stand-ins.
m = re.search(r"^python \(\) \{\n(.*?)^\}", text, re.M | re.S)
if not m:
    problems.append("no anonymous python function")
else:
    body = "def anon(d, bb):\n" + m.group(1)

    class Fatal(Exception):
        pass

    class BB:
        @staticmethod
        def fatal(msg):
            raise Fatal(msg)

    class D:
        def __init__(self, values):
            self.values = values

        def getVar(self, name):
            return self.values.get(name)

    scope = {}
    exec(compile(body, path, "exec"), scope)
    base = {
        "DULI_FORBIDDEN_IMAGE_FEATURES": " ".join(sorted(forbidden)),
        "IMAGE_FEATURES": "read-only-rootfs",
        "EXTRA_IMAGE_FEATURES": "",
        "EXTRA_USERS_PARAMS": "usermod -L root;",
    }
    try:
        scope["anon"](D(base), BB)
    except Fatal as e:
        problems.append("the anonymous function refuses the intended settings: %s" % e)
    cases = [("IMAGE_FEATURES", "read-only-rootfs " + f) for f in sorted(wanted)]
    cases += [("EXTRA_IMAGE_FEATURES", f) for f in sorted(wanted)]
    cases += [("EXTRA_USERS_PARAMS", "")]
    for var, value in cases:
        try:
            scope["anon"](D(dict(base, **{var: value})), BB)
            problems.append("the anonymous function accepts %s = %r" % (var, value))
        except Fatal:
            pass

if problems:
    for p in problems:
        print("FAIL: %s: %s" % (path, p))
    sys.exit(1)
print("ok: %s removes %s, locks root, and refuses a build that keeps them"
      % (path, " ".join(sorted(wanted))))
PY

echo "== no other layer file adds a login feature"
hits="$(grep -rnE 'IMAGE_FEATURES[^=]*=.*(allow-empty-password|empty-root-password|allow-root-login|serial-autologin-root|debug-tweaks)' \
    "$layer" --include='*.bb' --include='*.bbappend' --include='*.inc' --include='*.conf' \
    | grep -v "^$image:" || true)"
if [ -n "$hits" ]; then
    echo "$hits"
    echo "FAIL: the lines above add a feature that allows a login without a password"
    exit 1
fi
echo "ok"

echo "== kernel command lines open no shell without root's password"
for f in $layer/recipes-bsp/duli-bootenv/files/grub.cfg $layer/recipes-bsp/duli-bootenv/files/boot.cmd; do
    # GRUB's `linux` lines and U-Boot's bootargs.
    if grep -E '^[[:space:]]*linux[[:space:]]|bootargs' "$f" \
        | grep -E '(^|[[:space:]"=])(init=|rdinit=|SYSTEMD_SULOGIN_FORCE|systemd\.debug[-_]shell|rd\.shell|emergency|rescue|single|[sS1])([[:space:]"=]|$)'; then
        echo "FAIL: $f: the command line above opens a shell without root's password"
        exit 1
    fi
done
echo "ok"

echo "== GRUB: no entry editing and no command line at the console"
grubcfg=$layer/recipes-bsp/duli-bootenv/files/grub.cfg
grep -Eq '^[[:space:]]*set[[:space:]]+superusers="[^"]+"' "$grubcfg" \
    || { echo "FAIL: $grubcfg sets no superusers: anyone at the console can edit the kernel command line"; exit 1; }
if grep -Eq '^[[:space:]]*password(_pbkdf2)?[[:space:]]' "$grubcfg"; then
    echo "FAIL: $grubcfg defines a password: a GRUB user could edit the entries"
    exit 1
fi
if grep -E '^[[:space:]]*menuentry[[:space:]]' "$grubcfg" | grep -v -- '--unrestricted'; then
    echo "FAIL: $grubcfg: the entry above would need a login to boot"
    exit 1
fi
if command -v grub-script-check >/dev/null; then
    grub-script-check "$grubcfg" || { echo "FAIL: $grubcfg does not parse"; exit 1; }
else
    [ -z "${DULI_SKIP_LOG:-}" ] || echo "tests/yocto/image-security.sh: grub-script-check not installed" >> "$DULI_SKIP_LOG"
    echo "SKIP: grub-script-check (grub-common) not installed"
fi
echo "ok"

echo "== a trial that cannot reach mark-good falls back; every slot mounts /boot"
for f in $layer/recipes-bsp/duli-bootenv/files/grub.cfg $layer/recipes-bsp/duli-bootenv/files/boot.cmd; do
    grep -E '^[[:space:]]*linux[[:space:]]|bootargs' "$f" | grep -Eq '(^|[[:space:]])panic=[1-9][0-9]*([[:space:]"]|$)' \
        || { echo "FAIL: $f: the kernel command line does not reboot after a panic (panic=N)"; exit 1; }
done
grep -Eq 'RuntimeWatchdogSec=[1-9]' "$image" \
    || { echo "FAIL: $image does not let systemd feed the hardware watchdog"; exit 1; }
grep -Eq 'ROOTFS_POSTPROCESS_COMMAND:append = .*enable_duli_watchdog;' "$image" \
    || { echo "FAIL: $image does not run enable_duli_watchdog"; exit 1; }
wks=$layer/wic/duli-ab.wks
grep -E '^part /boot ' "$wks" | grep -q -- '--no-fstab-update' \
    || { echo "FAIL: $wks: /boot would be an fstab line of the first disk image only"; exit 1; }
grep -Eq '^Where=/boot$' systemd/boot.mount && grep -Eq '^What=/dev/disk/by-partlabel/esp$' systemd/boot.mount \
    || { echo "FAIL: systemd/boot.mount does not mount the EFI system partition at /boot"; exit 1; }
recipe=$layer/recipes-duli/duli/duli_git.bb
grep -Eq '^SYSTEMD_SERVICE:\$\{PN\}:append:x86-64 = " boot.mount"' "$recipe" \
    && grep -q 'systemd/boot.mount' "$recipe" \
    || { echo "FAIL: $recipe does not install and enable boot.mount on GRUB machines"; exit 1; }
echo "ok"

