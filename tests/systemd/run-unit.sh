#!/usr/bin/env bash
# Runs the shipped duli.service for real under a systemd user manager, without systemd as
# PID 1: in a private mount namespace (`unshare -m`) a tmpfs over /run/systemd with an
# empty system/ folder lets `systemd --user` start, with XDG_RUNTIME_DIR, XDG_CONFIG_HOME
# and XDG_STATE_HOME under a temporary folder. The unit file is systemd/duli.service as is,
# plus one drop-in with what a user manager needs instead:
#   ExecStart=  the binary under test, copied into the test's own folder under /var/lib
#               (the shipped ProtectHome= and PrivateTmp= hide a checkout under /home,
#               /root or /tmp from the unit, so the binary is placed where an installed one
#               could be), configuration from the environment (loopback ports, data in
#               %S/duli = the StateDirectory=, inference off);
#   User=, Group= reset: a user manager cannot switch users, so the daemon runs as the
#               manager's user (root here) with DULI_DEVICE__ALLOW_ROOT=true;
#   StandardError= a file, as there is no journald to read.
# Everything else (Type=notify, WatchdogSec=, the sandboxing) applies as shipped: the test
# fails if its drop-in sets any Protect*, Private* or Capability* key.
# Checks: `systemctl --user start` returns only after READY=1, the unit is active/running
# with its watchdog, C-ECHO and /healthz answer, the store lies in the StateDirectory, the
# files the daemon creates at its first start have their modes (state directory 0750; site
# secret, console key, setup code, control socket 0600), and `systemctl --user stop` ends it
# cleanly (Result=success, exit status 0).
# Skips (exit 0 with a message) when not root, without unshare/systemd, or without a
# built binary (DULI_BIN, else $CARGO_TARGET_DIR/debug/duli, else target/debug/duli).
# DULI_REQUIRE_UNIT=1 (set by CI, which runs as root) turns a skip for want of root,
# systemd or the binary into a failure (exit 1). Two limits of the machine itself still
# skip, listed in make test's skip summary: no tmpfs mount over /run/systemd, and a user
# manager that cannot start at all (some container set-ups).
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
skip_env() {
    echo "SKIP: $*"
    [ -z "${DULI_SKIP_LOG:-}" ] || echo "tests/systemd/run-unit.sh: $*" >> "$DULI_SKIP_LOG"
    exit 0
}
skip() {
    if [ "${DULI_REQUIRE_UNIT:-}" = 1 ]; then
        echo "FAIL: cannot run the unit test (DULI_REQUIRE_UNIT=1): $*" >&2
        exit 1
    fi
    skip_env "$@"
}
[ "$(id -u)" = 0 ] || skip "needs root for a private mount namespace"
command -v unshare >/dev/null && command -v systemctl >/dev/null || skip "unshare or systemctl missing"
[ -x /usr/lib/systemd/systemd ] || skip "/usr/lib/systemd/systemd missing"
bin="${DULI_BIN:-${CARGO_TARGET_DIR:-$here/target}/debug/duli}"
[ -x "$bin" ] || skip "no duli binary at $bin (cargo build -p duli, or set DULI_BIN)"

if [ "${1:-}" != --inside ]; then
    exec unshare -m --propagation private "$0" --inside
fi

# The manager's notify socket ($XDG_RUNTIME_DIR/systemd/notify) must be visible inside
# the unit's sandbox, or READY=1 never arrives: not under /tmp (PrivateTmp=), and not
# under /run either (in this set-up the service's /run showed none of the folders made
# there); /var/lib is only made read-only (ProtectSystem=strict).
base="$(mktemp -d /var/lib/duli-unit-XXXXXX)"
manager=""
cleanup() {
    [ -n "$manager" ] && kill "$manager" 2>/dev/null && wait "$manager" 2>/dev/null || true
    [ -n "${DULI_KEEP_TEST_DIRS:-}" ] || rm -rf "$base"
}
trap cleanup EXIT
mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd || skip_env "cannot mount a tmpfs over /run/systemd here (no CAP_SYS_ADMIN?)"
mkdir /run/systemd/system
mkdir -p "$base/run" "$base/config/systemd/user/duli.service.d" "$base/state"
chmod 700 "$base/run"
export XDG_RUNTIME_DIR="$base/run" XDG_CONFIG_HOME="$base/config" XDG_STATE_HOME="$base/state"

read -r dicom_port console_port < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
cp "$here/systemd/duli.service" "$base/config/systemd/user/duli.service"
mkdir -p "$base/bin"
install -m 0755 "$bin" "$base/bin/duli"
dropin="$base/config/systemd/user/duli.service.d/user-manager.conf"
cat > "$dropin" <<CONF
[Service]
ExecStart=
ExecStart=$base/bin/duli run
User=
Group=
Environment=DULI_DEVICE__DATA_DIR=%S/duli DULI_DEVICE__ALLOW_ROOT=true DULI_LOG=info
Environment=DULI_DICOM__BIND=127.0.0.1 DULI_DICOM__PORT=$dicom_port DULI_DICOM__QUIET_PERIOD=0
Environment=DULI_CONSOLE__BIND=127.0.0.1 DULI_CONSOLE__PORT=$console_port
Environment=DULI_INFERENCE__MODEL=/nonexistent/inference-off/model.toml
StandardError=file:$base/duli.log
CONF

# The shipped hardening is what is tested: the drop-in may not loosen it.
if grep -Eq '^[[:space:]]*(Protect[A-Za-z]*|Private[A-Za-z]*|Capability[A-Za-z]*|AmbientCapabilities)[[:space:]]*=' "$dropin"; then
    echo "FAIL: the test's drop-in changes the sandbox:"; grep -E '^(Protect|Private|Capab|Ambient)' "$dropin"; exit 1
fi

/usr/lib/systemd/systemd --user >"$base/manager.log" 2>&1 &
manager=$!
for _ in $(seq 100); do [ -S "$XDG_RUNTIME_DIR/systemd/private" ] && break; sleep 0.1; done
# A machine whose kernel or container set-up keeps a user manager from starting at all is
# an environment limit, not a fault of the unit: say so and skip.
[ -S "$XDG_RUNTIME_DIR/systemd/private" ] || { cat "$base/manager.log"; skip_env "a systemd user manager cannot start here (log above)"; }
# Running as root, the manager takes the inaccessible nodes that sandboxing binds over
# hidden paths (ProtectHome=, ProtectKernelLogs=, ...) from /run/systemd/inaccessible, which
# PID 1 would have made at boot; the user manager made its own set: copy it there.
cp -a "$XDG_RUNTIME_DIR/systemd/inaccessible" /run/systemd/

fail() {
    echo "FAIL: $*"
    systemctl --user status duli.service --no-pager || true
    echo "--- duli log"; cat "$base/duli.log" 2>/dev/null || true
    echo "--- user manager log"; tail -20 "$base/manager.log" 2>/dev/null || true
    exit 1
}
show() { systemctl --user show duli.service -p "$1" --value; }

echo "== systemctl --user start duli.service (Type=notify: returns after READY=1)"
timeout 60 systemctl --user start duli.service || fail "start (no READY=1 in 60 s?)"
[ "$(show ActiveState)/$(show SubState)" = active/running ] || fail "not active/running"
[ "$(show WatchdogUSec)" = 30s ] || fail "watchdog is $(show WatchdogUSec), want 30s"
pid="$(show MainPID)"
grep -q "^NoNewPrivs:[[:space:]]*1" "/proc/$pid/status" || fail "NoNewPrivileges= not applied"
grep -q "^CapBnd:[[:space:]]*0000000000000000" "/proc/$pid/status" || fail "CapabilityBoundingSet= not empty"
awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo" | grep -q '^ro' || fail "ProtectSystem=strict: / is not read-only"
for _ in $(seq 50); do [ "$(show WatchdogTimestampMonotonic)" != 0 ] && break; sleep 0.1; done
[ "$(show WatchdogTimestampMonotonic)" != 0 ] || fail "no WATCHDOG=1 received"
echo "ok: active/running, pid $pid, watchdog 30s fed, / read-only, no capabilities, no new privileges"

echo "== the daemon answers"
"$bin" echo "DULI@127.0.0.1:$dicom_port" || fail "C-ECHO"
code="$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$console_port/healthz")"
[ "$code" = 200 ] || fail "/healthz answered $code"
# StateDirectory= of a user unit: $XDG_STATE_HOME from systemd 254 on, $XDG_CONFIG_HOME before.
state="$XDG_STATE_HOME/duli"; [ -d "$state" ] || state="$XDG_CONFIG_HOME/duli"
[ -f "$state/site_secret" ] && [ -d "$state/console" ] || fail "no store in the StateDirectory $state"
grep -q "store open at $state:" "$base/duli.log" || fail "the store is not in $state"
echo "ok: C-ECHO, /healthz 200, store in StateDirectory=duli"

echo "== modes of what the daemon made at its first start (UMask=0077, StateDirectoryMode=0750)"
# This configuration provisions nothing, so the daemon made its site secret, the console's
# self-signed key and the first-time setup code (no administrator exists) itself.
mode_is() {
    [ -e "$2" ] || fail "$2 is missing"
    [ "$(stat -c %a "$2")" = "$1" ] || fail "$2 has mode $(stat -c %a "$2"), want $1"
}
mode_is 750 "$state"
mode_is 600 "$state/site_secret"
mode_is 600 "$state/console/key.pem"
mode_is 600 "$state/console/setup-code"
[ -S "$state/duli.sock" ] || fail "no control socket at $state/duli.sock"
mode_is 600 "$state/duli.sock"
echo "ok: state directory 750; site secret, console key, setup code, control socket 600"

echo "== the sandboxed pixel decoder works inside the unit's sandbox"
# JPEG-LS and JPEG 2000 are decoded by a child (`duli decode-pixels`) that installs its own
# seccomp filter beneath the unit's SystemCallFilter=: run it as a transient unit with
# every sandboxing key of the shipped unit.
props=()
while IFS= read -r line; do
    case "$line" in
    NoNewPrivileges=* | SystemCall*=* | Restrict*=* | Protect*=* | Private*=* | \
        MemoryDenyWriteExecute=* | LockPersonality=* | CapabilityBoundingSet=* | \
        UMask=* | Limit*=*) props+=(-p "$line") ;;
    esac
done < <(sed -n '/^\[Service\]/,/^\[/p' "$here/systemd/duli.service")
[ ${#props[@]} -ge 10 ] || fail "found only ${#props[@]} sandboxing keys in the unit"
cp "$here/fuzz/corpus/pixels/jpeg-ls-lossless.dcm" "$base/ls.dcm"
magic="$(systemd-run --user --quiet --wait --pipe --collect "${props[@]}" \
    "$base/bin/duli" decode-pixels "$base/ls.dcm" 2>"$base/decoder.err" | head -c 8 || true)"
[ "$magic" = DULIGRAY ] || fail "decode-pixels under the unit's sandbox: $(cat "$base/decoder.err")"
echo "ok: a JPEG-LS image decodes in the confined child under the unit's ${#props[@]} sandboxing keys"

echo "== systemctl --user stop duli.service"
timeout 60 systemctl --user stop duli.service || fail "stop"
[ "$(show Result)" = success ] || fail "Result=$(show Result)"
[ "$(show ExecMainStatus)" = 0 ] || fail "exit status $(show ExecMainStatus)"
grep -q "stopped cleanly" "$base/duli.log" || fail "no clean stop in the log"
! grep -q "sd_notify .* failed" "$base/duli.log" || fail "a notification did not reach the manager"
echo "ok: stopped cleanly (Result=success, status 0)"
