#!/usr/bin/env bash
# Integration smoke test under valgrind: the real daemon, real sockets,
# well-formed, malformed, duplicate, batch and oversize input, then SIGTERM.
# Fails on any memory error or leak (valgrind --error-exitcode=1) or a
# non-zero exit.   scripts/valgrind-smoke.sh [BUILD]
set -u
cd "$(dirname "$0")/.."
build=${1:-build}
command -v valgrind >/dev/null || { echo "valgrind-smoke: valgrind not installed (apt-get install valgrind)"; exit 1; }
work=$(mktemp -d); hb=
cleanup() { [ -n "$hb" ] && kill -9 "$hb" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port=$(/usr/bin/python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cat > "$work/c.yaml" <<YAML
listen:
  - name: smoke
    address: 127.0.0.1:$port
    max_message_bytes: 65536
store:
  path: $work/store/hl7bridge.db
  min_free_disk_mb: 0
sinks:
  audit:
    type: file
    directory: $work/out
    batch: {max_rows: 2, max_age_s: 1}
  sms:
    type: file
    path: $work/sms.jsonl
metrics:
  enabled: false
YAML
valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect --log-file="$work/vg.log" \
    "$build"/hl7bridge run -c "$work/c.yaml" 2> "$work/hb.log" & hb=$!
for _ in $(seq 200); do grep -q "event=started" "$work/hb.log" 2>/dev/null && break; sleep 0.1; done
grep -q "event=started" "$work/hb.log" || { echo "valgrind-smoke: daemon did not start"; cat "$work/hb.log" "$work/vg.log"; exit 1; }
fx=tests/fixtures
"$build"/hl7bridge send --timeout 30 127.0.0.1:"$port" $fx/messages/adt-a01.hl7 $fx/messages/adt-a01.hl7 \
    $fx/mapping/*.hl7 > "$work/send1.log" 2>&1 || { echo "valgrind-smoke: good messages not accepted"; cat "$work/send1.log"; }
ok=$?
if [ -d ../shared/corpus ]; then
    "$build"/hl7bridge send --timeout 30 127.0.0.1:"$port" ../shared/corpus/edge/*.hl7 ../shared/corpus/malformed/*.hl7 \
        > "$work/send2.log" 2>&1   # malformed ones answer AR: exit 1 expected
fi
/usr/bin/python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
s.sendall(b"\x0bMSH|^~\\&|A|B|C|D|20260101||ADT^A01|BIG|P|2.5\r" + b"X" * 70000)
s.settimeout(30)
data = s.recv(65536)
assert b"MSA|AR" in data, data
PY
sleep 2   # let the file sink write a block
kill -TERM "$hb"; wait "$hb"; rc=$?; hb=
if [ "$rc" -ne 0 ] || [ "$ok" -ne 0 ] || [ -s "$work/vg.log" ]; then
    echo "valgrind-smoke: FAILED (exit $rc)"; cat "$work/vg.log"; tail -20 "$work/hb.log"
    echo "0 1 0" > build/results/valgrind.txt
    echo "valgrind: 0 passed, 1 failed"; exit 1
fi
mkdir -p build/results; echo "1 0 0" > build/results/valgrind.txt
echo "valgrind: 1 passed, 0 failed (daemon clean under memcheck)"
