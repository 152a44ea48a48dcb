#!/usr/bin/env bash
# Runs the integration tests against the real binary: BUILD/hl7bridge,
# driven over loopback sockets by Debian's python3-hl7 client, hl7bridge
# send, node-hl7-client and the project's load generator.
#
# The long connector outage (test_sink_outage: minutes of a daemon waiting
# on its retry backoff, a few hundred messages every ten seconds) runs in a
# second process beside the rest: it keeps its full length without adding
# it to the suite's time.  The two cluster modules (test_postgresql,
# test_pg_delivery: two minutes, mostly waiting on leases, heartbeats and
# server restarts) join it there, so the two processes take about as long
# as each other; each process starts its own throwaway PostgreSQL server
# (pgserver.shared()).  Every test picks its own free ports.
set -u
cd "$(dirname "$0")/.."
build=${1:-build}
export HL7BRIDGE_BIN=$PWD/$build/hl7bridge LOADGEN_BIN=$PWD/$build/bench/loadgen
export PYTHONPATH=$PWD/tests/integration${PYTHONPATH:+:$PYTHONPATH}
mkdir -p build/results
log=build/results/integration.log
slow=(test_sink_outage test_postgresql test_pg_delivery)
rest=()
for f in tests/integration/test_*.py tests/integration/*/test_*.py; do
    m=${f#tests/integration/}; m=${m%.py}; m=${m//\//.}
    [[ " ${slow[*]} " == *" $m "* ]] || rest+=("$m")
done
/usr/bin/python3 -m unittest -v "${slow[@]}" > "$log.slow" 2>&1 &
slow_pid=$!
/usr/bin/python3 -m unittest -v "${rest[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
wait "$slow_pid"
rc_slow=$?
echo "---- ${slow[*]} (run beside the rest)"
cat "$log.slow"
# unittest prints "Ran N tests" and one FAIL:/ERROR: block per failing
# sub-test: count failing tests once each.  Skips come from its last line.
tally() {
    local l=$1 ran fail last skip
    ran=$(grep -oE '^Ran [0-9]+ test' "$l" | grep -oE '[0-9]+' || echo 0)
    fail=$(grep -E '^(FAIL|ERROR): ' "$l" | awk '{print $2}' | sort -u | wc -l)
    last=$(grep -E '^(OK|FAILED)' "$l" | tail -1)
    skip=$(grep -oE 'skipped=[0-9]+' <<<"$last" | cut -d= -f2 || true); skip=${skip:-0}
    if [ -z "$last" ] && [ "$fail" -eq 0 ]; then fail=1; fi
    echo "$((ran - fail - skip)) $fail $skip"
}
read -r p1 f1 s1 < <(tally "$log")
read -r p2 f2 s2 < <(tally "$log.slow")
pass=$((p1 + p2)) fail=$((f1 + f2)) skip=$((s1 + s2))
cat "$log.slow" >> "$log"
echo "$pass $fail $skip" > build/results/integration.txt
echo "integration: $pass passed, $fail failed, $skip skipped"
[ "$rc" -eq 0 ] && [ "$rc_slow" -eq 0 ]
