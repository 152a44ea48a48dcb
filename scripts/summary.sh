#!/usr/bin/env bash
# Adds up the tallies every stage of `make test` wrote to build/results/.
cd "$(dirname "$0")/.."
p=0; f=0; s=0
for r in build/results/*.txt; do
    [ -f "$r" ] || continue
    read -r a b c < "$r"
    p=$((p + a)); f=$((f + b)); s=$((s + c))
done
echo "tests: $p passed, $f failed, $s skipped"
[ "$f" -eq 0 ]
