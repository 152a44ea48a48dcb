#!/usr/bin/env bash
# Installs the Debian packages hl7bridge needs that this machine lacks.
#   scripts/deps.sh build   — what building and running the daemon needs
#   scripts/deps.sh test    — that plus what the tests need
#   scripts/deps.sh bench   — build plus what `make soak` needs (the chart)
# As root it runs apt-get; otherwise it prints the exact command to run.
set -euo pipefail
mode=${1:-build}

build_pkgs=(gcc make pkg-config libssl-dev libcurl4-openssl-dev libsqlite3-dev libyaml-dev
            libmicrohttpd-dev libjansson-dev libpq-dev tzdata)
test_pkgs=(libcmocka-dev python3 python3-hl7 openssl sqlite3 clang libclang-rt-14-dev
           cppcheck clang-tidy valgrind prometheus chromium libfaketime
           systemd dpkg-dev    # systemd-analyze verify; dpkg-shlibdeps for make deb
           postgresql)         # a throwaway server for tests/integration/test_postgresql.py
bench_pkgs=(python3 python3-yaml openssl gnuplot-nox)   # make soak: config, emulator, chart

want=("${build_pkgs[@]}")
if [ "$mode" = test ]; then want+=("${test_pkgs[@]}"); fi
if [ "$mode" = bench ]; then want+=("${bench_pkgs[@]}"); fi

missing=()
for p in "${want[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: missing Debian packages: ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "deps: run as root:  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: installed ${missing[*]}" >&2
