#!/usr/bin/env bash
# Builds and runs each libFuzzer target for SECONDS seconds.
#   scripts/fuzz.sh SECONDS TARGET...
# A target is tests/fuzz/<name>/ with fuzz.c, a `modules` file (the project
# modules it links, e.g. "core hl7"), seeds/ and, when the file
# use-shared-corpus exists, every .hl7 of ../shared/corpus as extra seeds;
# a `max_len` file overrides the longest input tried (default 65536).
# Fails on any crash, leak or timeout.
set -u
cd "$(dirname "$0")/.."
secs=$1; shift
command -v clang >/dev/null || { echo "fuzz: clang not installed (apt-get install clang libclang-rt-14-dev)" >&2; exit 1; }
out=build-fuzz; mkdir -p "$out" build/results
pass=0; fail=0
pkgs="openssl libcurl sqlite3 yaml-0.1 libmicrohttpd"
for t in "$@"; do
    dir=tests/fuzz/$t
    [ -f "$dir/fuzz.c" ] || continue
    srcs=()
    for m in $(cat "$dir/modules"); do srcs+=($m/*.c); done
    bin=$out/fuzz_$t
    if ! clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
            -fno-sanitize-recover=all -I. $(pkg-config --cflags $pkgs) \
            -o "$bin" "$dir/fuzz.c" "${srcs[@]}" $(pkg-config --libs $pkgs) -lpthread -lm; then
        echo "fuzz $t: build failed"; fail=$((fail + 1)); continue
    fi
    work=$(mktemp -d); mkdir -p "$work/corpus"
    seeds=("$work/corpus")
    [ -d "$dir/seeds" ] && seeds+=("$dir/seeds")
    if [ -f "$dir/use-shared-corpus" ]; then
        if [ -d ../shared/corpus ]; then
            mkdir -p "$work/shared"
            i=0; while IFS= read -r f; do i=$((i + 1)); cp "$f" "$work/shared/$i.hl7"; done \
                < <(find ../shared/corpus -name '*.hl7' -size -64k)
            seeds+=("$work/shared")
        else
            echo "fuzz $t: ../shared/corpus absent, seeding from the project's own fixtures only"
        fi
    fi
    maxlen=65536
    [ -f "$dir/max_len" ] && maxlen=$(cat "$dir/max_len")
    if "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len="$maxlen" \
            -artifact_prefix="$out/${t}-" -print_final_stats=1 "${seeds[@]}" > "$work/log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/log" | grep -o '[0-9]*$')
        echo "fuzz $t: ${secs}s, ${runs:-?} runs, no finding"; pass=$((pass + 1))
    else
        echo "fuzz $t: FINDING"; tail -60 "$work/log"; fail=$((fail + 1))
    fi
    rm -rf "$work"
done
echo "$pass $fail 0" > build/results/fuzz.txt
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
