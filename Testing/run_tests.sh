#!/usr/bin/env bash
# The test command: installs what the suite needs on a fresh Debian/Ubuntu machine, then runs pytest.
#
#   bash Testing/run_tests.sh [PYTEST ARGS...]
#
# System packages are installed when the script can (root, or sudo without a password); Python packages go into
# a virtual environment in .venv (PEP 668 systems refuse pip outside one), re-installed only when pyproject.toml
# changes. VOTEMI_PYTHON picks the interpreter that creates the venv (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."

# Offscreen slice-view rendering (EGL + Mesa); PyQt5's offscreen platform for the panel tests (GLib, fontconfig,
# X11 client libraries, a font); the Colin27 brain of the README example; venv support for Debian's python3.
REQUIRED_APT="python3-venv libegl1 libegl-mesa0 libgl1-mesa-dri libglu1-mesa libxt6 libgl1 libglib2.0-0 \
libfontconfig1 libfreetype6 libx11-6 libxext6 fonts-dejavu-core mricron-data"
# Independent DICOM validators for the exported objects (dcmtk, dicom3tools), Chromium for the HTML report and
# WordNet for the METEOR score of `votemi eval`.
OPTIONAL_APT="dcmtk dicom3tools chromium wordnet-base"
EXTRAS="vlm,mrml,dicom,batch,eval,test"

apt_install() {
    local runner=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then runner=(sudo -n); else return 1; fi
    fi
    command -v apt-get >/dev/null || return 1
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "run_tests: installing ${missing[*]}" >&2
    "${runner[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${runner[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# shellcheck disable=SC2086
apt_install $REQUIRED_APT || echo "run_tests: cannot install system packages (not root, no sudo); using what is there" >&2
# shellcheck disable=SC2086
for package in $OPTIONAL_APT; do
    apt_install "$package" || echo "run_tests: $package not installed; the tests that need it will say so" >&2
done

PYTHON="${VOTEMI_PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.votemi-installed"
WANT="$(cat pyproject.toml "$0" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # The CPU build of torch first: a plain "torch" would pull a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install -q torch==2.13.0
    "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
    echo "$WANT" > "$STAMP"
fi

# Tests start `votemi` and the venv's python as child processes: put the venv first on PATH.
export PATH="$PWD/$VENV/bin:$PATH"
exec "$VENV/bin/python" -m pytest Testing -q "$@"
