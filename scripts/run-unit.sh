#!/usr/bin/env bash
# Runs every unit test binary given on the command line from the project
# root (tests read tests/fixtures and ../shared/corpus relative to it), in TAP
# form, and prints one tally.  Exit status 1 if any test failed.
set -u
cd "$(dirname "$0")/.."
pass=0; fail=0; skip=0; bad=()
for t in "$@"; do
    out=$(CMOCKA_MESSAGE_OUTPUT=TAP "$t" 2>&1); rc=$?
    p=$(grep -cE '^ok [0-9]+' <<<"$out"); p=${p:-0}
    s=$(grep -cE '^ok [0-9]+ .*# SKIP' <<<"$out"); s=${s:-0}
    f=$(grep -cE '^not ok [0-9]+' <<<"$out"); f=${f:-0}
    p=$((p - s))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi   # crashed or aborted
    printf '%-40s %4d passed %4d failed %4d skipped\n' "$(basename "$t")" "$p" "$f" "$s"
    if [ "$f" -ne 0 ]; then bad+=("$t"); echo "$out" | grep -vE '^ok ' | tail -40; fi
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
done
mkdir -p build/results
variant=${SANITIZER:-plain}
echo "$pass $fail $skip" > "build/results/unit-$variant.txt"
echo "unit ($variant): $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
