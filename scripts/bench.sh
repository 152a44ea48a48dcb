#!/usr/bin/env bash
# `make bench`: hl7bridge against the null MLLP responder (same transport and
# HL7 code, no storage), same load, same run, so the ratio is meaningful on a
# shared machine.  Then the mapping throughput.  Figures go to stdout and to
# build/bench-results.txt.
#   BENCH_MESSAGES (default 200000), BENCH_FILE (default the 600-byte ADT^A01),
#   BENCH_AUDIT_MESSAGES (default 200000) and BENCH_BACKLOG (default 5000000)
#   for the audit sink: rows/s MLLP in → connector emulator, and the time to
#   push a backlog of that many rows.
set -u
cd "$(dirname "$0")/.."
build=${1:-build}
msgs=${BENCH_MESSAGES:-200000}
file=${BENCH_FILE:-tests/fixtures/bench/adt-a01-600b.hl7}
work=$(mktemp -d -p "$PWD/var" bench.XXXXXX 2>/dev/null || { mkdir -p var; mktemp -d -p "$PWD/var" bench.XXXXXX; })
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

scenarios=("8 1" "8 32")
declare -A res

run_load() { # name port
    for sc in "${scenarios[@]}"; do
        set -- "$1" "$2" $sc
        out=$("$build"/bench/loadgen --addr 127.0.0.1:"$2" --conns "$3" --window "$4" \
              --messages "$msgs" --file "$file") || { echo "bench: loadgen failed against $1: $out"; exit 1; }
        res["$1,$3,$4"]=$out
        echo "$1 conns=$3 window=$4: $out"
    done
}

echo "bench: $msgs messages of $(wc -c < "$file") bytes per scenario"
port=$(free_port)
"$build"/bench/null_responder --port "$port" > "$work/null.log" 2>&1 & pids+=($!)
wait_port "$port" || { echo "bench: null responder did not start"; exit 1; }
run_load null "$port"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null

start_hb() { # name metrics(true|false)
    port=$(free_port); mport=$(free_port)
    rm -rf "$work/store"
    cat > "$work/bench.yaml" <<YAML
listen:
  - name: bench
    address: 127.0.0.1:$port
store:
  path: $work/store/hl7bridge.db
log:
  level: info
sinks:
  audit:
    type: file
    directory: $work/out
  sms:
    type: none
metrics:
  enabled: $2
  address: 127.0.0.1:$mport
YAML
    "$build"/hl7bridge run -c "$work/bench.yaml" 2> "$work/$1.log" & hb=$!; pids+=($hb)
    wait_port "$port" || { echo "bench: hl7bridge did not start"; cat "$work/$1.log"; exit 1; }
}

start_hb hl7bridge false
run_load hl7bridge "$port"
kill -TERM "$hb"; wait "$hb" 2>/dev/null
start_hb metrics true
run_load metrics "$port"
kill -TERM "$hb"; wait "$hb" 2>/dev/null

field() { grep -oE "$2=[0-9.]+" <<<"$1" | cut -d= -f2; }
{
echo
printf '%-20s %11s %11s %7s %9s %9s %11s %9s\n' scenario null_msg/s hl7b_msg/s ratio \
    p50_us p99_us metrics_on on/off
for sc in "${scenarios[@]}"; do
    set -- $sc
    n=${res["null,$1,$2"]}; h=${res["hl7bridge,$1,$2"]}; m=${res["metrics,$1,$2"]}
    nr=$(field "$n" rate); hr=$(field "$h" rate); mr=$(field "$m" rate)
    ratio=$(awk -v a="$hr" -v b="$nr" 'BEGIN{printf "%.3f", a/b}')
    onoff=$(awk -v a="$mr" -v b="$hr" 'BEGIN{printf "%.3f", a/b}')
    printf '%-20s %11s %11s %7s %9s %9s %11s %9s\n' "conns=$1 window=$2" "$nr" "$hr" "$ratio" \
        "$(field "$h" p50_us)" "$(field "$h" p99_us)" "$mr" "$onoff"
done
echo "(ratio = hl7bridge / null responder; on/off = metrics on / metrics off; each fsyncs every"
echo " accepted message before its ACK)"
# The writer's own account of both scenarios (metrics off run): how many
# messages shared a commit and what a commit cost, fsync included.
grep -o 'event=store_close.*' "$work/hl7bridge.log" | sed 's/^event=store_close/store writer:/' || true
if [ -x "$build/bench/bench_mapping" ]; then echo; "$build/bench/bench_mapping"; fi
echo
/usr/bin/python3 tests/bench/audit_bench.py --messages "${BENCH_AUDIT_MESSAGES:-200000}" \
    --backlog "${BENCH_BACKLOG:-5000000}"
} | tee build/bench-results.txt
