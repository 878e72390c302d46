#!/usr/bin/env bash
# Makes sure the tools that building the binary needs are present: cmake, nasm and a C
# compiler, with which the turbojpeg crate builds libjpeg-turbo into it (plus any tools named
# as arguments, e.g. `make`). What is missing is installed with apt-get: directly as root,
# through sudo otherwise; where neither can work, it prints the one command to run and fails.
# `make build`, `make test` and .ci/run call it; with everything present it does nothing.
set -euo pipefail

missing=()
for tool in "$@" cmake nasm cc; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

packages=()
for tool in "${missing[@]}"; do
    case "$tool" in cc) packages+=(gcc) ;; c++) packages+=(g++) ;; *) packages+=("$tool") ;; esac
done
install="apt-get update && apt-get install -y ${packages[*]}"
why="building needs ${missing[*]} (cmake, nasm and a C compiler build libjpeg-turbo into the binary)"

if ! command -v apt-get >/dev/null 2>&1; then
    echo "$why; install ${packages[*]} with your system's package manager" >&2
    exit 1
fi
# sudo does not pass the environment on, so the front end is set through env.
if [ "$(id -u)" = 0 ]; then
    as_root=(env DEBIAN_FRONTEND=noninteractive)
    how="apt-get, as root"
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
    how="sudo apt-get"
else
    echo "$why; as root, run: $install" >&2
    exit 1
fi

echo "$why: installing ${packages[*]} with $how" >&2
if ! { "${as_root[@]}" apt-get update -qq &&
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"; }; then
    echo "could not install them; as root, run: $install" >&2
    exit 1
fi
for tool in "${missing[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$tool is still missing after installing ${packages[*]}; as root, run: $install" >&2
        exit 1
    fi
done
