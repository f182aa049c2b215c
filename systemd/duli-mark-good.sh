#!/bin/sh
# ExecStart= of duli-mark-good.service, installed as /usr/lib/duli/mark-good: runs
# `duli firmware mark-good ARGS...` and lets its failure reach the unit (and its
# FailureAction=reboot) only on a trial boot.
#
# A trial boot is one whose booted slot (duli.slot= on the kernel command line) is not the
# committed slot (duli_active in the GRUB environment block, or U-Boot's through
# fw_printenv; unset means A, as in grub.cfg and boot.cmd). This is read here rather than
# by duli itself because duli needs its configuration, on the data partition, before it
# can read the boot variables: a damaged data partition must not make a committed slot
# reboot for ever (the bootloader would only boot the same slot again).
#
#   trial boot, mark-good fails      exit with its status: the unit fails and reboots,
#                                    which spends one boot attempt
#   committed slot, mark-good fails  exit 75 (SuccessExitStatus= of the unit): logged, no reboot
#   state unknown (no duli.slot=, no readable boot variables, or a GRUB environment block
#   that is not one: empty or overwritten), mark-good fails
#                                    exit 75 as well: a reboot could not be shown to help
#                                    (with a damaged block GRUB boots slot A, which nothing
#                                    vouches for)
#
# DULI, DULI_CMDLINE, DULI_GRUBENV name the binary, the command line and the GRUB
# environment block (the defaults are the image's; the tests point them elsewhere).
set -u

duli="${DULI:-/usr/bin/duli}"
cmdline="${DULI_CMDLINE:-/proc/cmdline}"
grubenv="${DULI_GRUBENV:-/boot/EFI/BOOT/grubenv}"
no_reboot=75

"$duli" firmware mark-good "$@"
status=$?
[ "$status" -eq 0 ] && exit 0

# The slot named once only: two duli.slot= (a stale one saved with the bootargs) leave it
# unknown, as the daemon's own reading does.
booted="$(tr ' ' '\n' <"$cmdline" 2>/dev/null | sed -n 's/^duli\.slot=\([AB]\)$/\1/p')"
case "$booted" in
A | B) ;;
*) booted="" ;;
esac
active=""
damaged=""
if [ -r "$grubenv" ]; then
    # A block without duli_active is a freshly imaged box (slot A); a file that does not
    # start with the block's signature is no block at all.
    if [ "$(sed -n '1p;1q' "$grubenv" 2>/dev/null)" = "# GRUB Environment Block" ]; then
        active="$(sed -n 's/^duli_active=\([AB]\)$/\1/p' "$grubenv" | tail -n 1)"
        [ -n "$active" ] || active=A
    else
        damaged="; GRUB environment block $grubenv is damaged"
    fi
elif command -v fw_printenv >/dev/null 2>&1; then
    if value="$(fw_printenv -n duli_active 2>/dev/null)"; then
        case "$value" in
        A | B) active="$value" ;;
        "") active=A ;;
        esac
    fi
fi

if [ -z "$booted" ] || [ -z "$active" ]; then
    echo "mark-good failed (exit $status); booted slot '${booted:-?}', committed slot '${active:-?}' unknown${damaged}: not rebooting" >&2
    exit "$no_reboot"
fi
if [ "$booted" = "$active" ]; then
    echo "mark-good failed (exit $status) on the committed slot $booted: not rebooting" >&2
    exit "$no_reboot"
fi
echo "mark-good failed (exit $status) on a trial boot of slot $booted (committed slot $active): rebooting" >&2
exit "$status"
