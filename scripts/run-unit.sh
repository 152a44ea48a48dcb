#!/usr/bin/env bash
# Runs every unit test binary given on the command line from the project
# root (tests read tests/fixtures and ../shared/corpus relative to it), in TAP
# form, and prints one tally.  Exit status 1 if any test failed.
set -u
cd "$(dirname "$0")/.."
pass=0; fail=0; skip=0; bad=()
for t in "$@"; do
    out=$(CMOCKA_MESSAGE_OUTPUT=TAP "$t" 2>&1); rc=$?
    # cmocka's TAP marks a skipped test "not ok N # SKIP" (some versions
    # "ok N # SKIP"): skips are neither passes nor failures.
    p=$(grep -E '^ok [0-9]+' <<<"$out" | grep -cv '# SKIP'); p=${p:-0}
    s=$(grep -cE '^(not )?ok [0-9]+.*# SKIP' <<<"$out"); s=${s:-0}
    f=$(grep -E '^not ok [0-9]+' <<<"$out" | grep -cv '# SKIP'); f=${f:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi   # crashed or aborted
    printf '%-40s %4d passed %4d failed %4d skipped\n' "$(basename "$t")" "$p" "$f" "$s"
    if [ "$f" -ne 0 ]; then bad+=("$t"); echo "$out" | grep -vE '^ok ' | tail -40; fi
    [ "$s" -ne 0 ] && grep -E '# SKIP|absent|skipped' <<<"$out" | grep -v '^ok' | head -5
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
done
mkdir -p build/results
variant=${SANITIZER:-plain}
echo "$pass $fail $skip" > "build/results/unit-$variant.txt"
echo "unit ($variant): $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
