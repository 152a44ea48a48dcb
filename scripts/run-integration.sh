#!/usr/bin/env bash
# Runs the integration tests against the real binary: BUILD/hl7bridge,
# driven over loopback sockets by Debian's python3-hl7 client, hl7bridge
# send, node-hl7-client and the project's load generator.
set -u
cd "$(dirname "$0")/.."
build=${1:-build}
export HL7BRIDGE_BIN=$PWD/$build/hl7bridge LOADGEN_BIN=$PWD/$build/bench/loadgen
mkdir -p build/results
log=build/results/integration.log
/usr/bin/python3 -m unittest discover -s tests/integration -p 'test_*.py' -v 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# unittest prints "Ran N tests" and one FAIL:/ERROR: block per failing
# sub-test: count failing tests once each.  Skips come from its last line.
ran=$(grep -oE '^Ran [0-9]+ test' "$log" | grep -oE '[0-9]+' || echo 0)
fail=$(grep -E '^(FAIL|ERROR): ' "$log" | awk '{print $2}' | sort -u | wc -l)
last=$(grep -E '^(OK|FAILED)' "$log" | tail -1)
skip=$(grep -oE 'skipped=[0-9]+' <<<"$last" | cut -d= -f2 || true); skip=${skip:-0}
if [ -z "$last" ] && [ "$fail" -eq 0 ]; then fail=1; fi
pass=$((ran - fail - skip))
echo "$pass $fail $skip" > build/results/integration.txt
echo "integration: $pass passed, $fail failed, $skip skipped"
[ "$rc" -eq 0 ]
