#!/usr/bin/env bash
# Installs what the test suite needs on Debian 12 and creates the Python virtual
# environment at .venv in the repository root. Idempotent: when everything is
# already present it only checks and returns (well under a second).
#
#   scripts/setup-test-env.sh            # apt packages (as root) + .venv
#   SKIP_APT=1 scripts/setup-test-env.sh # only the virtual environment
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
requirements="$repo/tests/requirements.txt"

apt_packages=(
    dcmtk dicom3tools orthanc orthanc-python mosquitto mosquitto-clients
    make cmake g++ libubootenv-tool u-boot-tools grub-common procps
    openssl ca-certificates python3-venv curl chromium chromium-driver
    systemd
)

log() { printf 'setup-test-env: %s\n' "$*" >&2; }

missing_packages() {
    local pkg status
    for pkg in "${apt_packages[@]}"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
        [ "$status" = installed ] || printf '%s\n' "$pkg"
    done
}

install_apt() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        log "not a Debian system: skipping apt, install the peers yourself"
        return 0
    fi
    local missing
    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "apt packages present"
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            log "missing packages (${missing[*]}) and not root: tests that need them will SKIP"
            return 0
        fi
    fi
    log "installing: ${missing[*]}"
    # Keep Debian's maintainer scripts from starting Orthanc and Mosquitto as
    # system services: the tests start their own instances on loopback ports.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        created_policy=1
    fi
    local rc=0
    {
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                --no-install-recommends "${missing[@]}"
    } || rc=$?
    if [ "$created_policy" -eq 1 ]; then
        "${sudo[@]}" rm -f "$policy"
    fi
    return "$rc"
}

pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3 python; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

setup_venv() {
    local stamp="$venv/.requirements.sha256" want
    want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
        "$venv/bin/python" -c 'import pynetdicom, pydicom, hl7, numpy, highdicom, hl7apy' 2>/dev/null; then
        log ".venv up to date"
        return 0
    fi
    local python
    if ! python="$(pick_python)"; then
        log "no Python >= 3.9 with venv found: Python peers will SKIP"
        return 0
    fi
    if [ ! -x "$venv/bin/python" ]; then
        log "creating .venv with $python ($("$python" --version 2>&1))"
        "$python" -m venv "$venv"
    fi
    log "installing tests/requirements.txt into .venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
    printf '%s\n' "$want" >"$stamp"
}

if [ "${SKIP_APT:-0}" != 1 ]; then
    install_apt
fi
setup_venv
