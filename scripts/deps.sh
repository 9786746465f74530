#!/usr/bin/env bash
# Installs what timebox needs to build and test on Debian 12 (bookworm), and
# only what is missing.  Quiet and quick when everything is already there.
#
#   bash scripts/deps.sh          as root, or as a user who may use sudo
#
# Runs `apt-get update` only when something has to be installed.  Exits
# non-zero, with a message saying why, when it cannot install.
set -euo pipefail

packages=(
    gcc make libc6-dev # a C compiler and make (build-essential without C++)
    cmake
    pkg-config
    libuv1-dev
    libmsgpack-dev
    libsodium-dev    # its header; the shared forkserver's handshake loads libsodium23
    libcriterion-dev # the test suite
    libdw-dev        # optional: traces taken from outside the child (elfutils'
                     # libdwfl); without it timebox builds and asks the child
)

die() {
    echo "deps.sh: $*" >&2
    exit 1
}

command -v dpkg-query >/dev/null 2>&1 ||
    die "dpkg-query not found: this script is for Debian 12; install the packages above by hand"

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$p")
done

[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    die "need root (or sudo) to install: ${missing[*]}"
fi

echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run() {
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "$@" >"$log" 2>&1; then
        cat "$log" >&2
        die "failed: $*"
    fi
}

run apt-get update -q
run apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "deps.sh: done" >&2
