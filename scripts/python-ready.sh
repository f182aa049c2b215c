# Sourced by the setup scripts: makes sure the Python they run has what they use. On a
# fresh Debian 12, pip and venv are packages of their own (python3-pip, python3-venv):
# installed with apt-get when this runs as root, else the script stops naming the command.

# ensure_python WHAT: WHAT is `pip` (pip download/install) or `venv` (python3 -m venv).
ensure_python() {
    local py="${PYTHON:-python3}" what="$1" check package
    case "$what" in
        pip) check="import pip"; package=python3-pip ;;
        venv) check="import venv, ensurepip"; package=python3-venv ;;
        *) echo "ensure_python: unknown $what" >&2; return 2 ;;
    esac
    command -v "$py" >/dev/null || {
        echo "$(basename "$0"): $py not found (Debian: sudo apt-get install python3 $package)" >&2
        exit 1
    }
    "$py" -c "$check" 2>/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "$(basename "$0"): installing $package with apt-get ($py -m $what is missing)"
        # `if` and `|| true`: a failed install falls through to the message below, which
        # `set -e` in the calling script would otherwise cut off.
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null 2>&1; then
            apt-get update -qq >/dev/null 2>&1 || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null 2>&1 || true
        fi
        "$py" -c "$check" 2>/dev/null && return 0
    fi
    echo "$(basename "$0"): $py -m $what is not available; install it (Debian: sudo apt-get install $package) and run again" >&2
    exit 1
}
