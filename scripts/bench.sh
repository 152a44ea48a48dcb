#!/usr/bin/env bash
# `make bench`: hl7bridge against the null MLLP responder (same transport and
# HL7 code, no storage), same load, same run, so the ratio is meaningful on a
# shared machine.  Then the mapping throughput and the audit sink end to end.
# Figures go to stdout and to build/bench-results.txt.
#
# A store behaves differently new and after a while, so hl7bridge is
# measured in phases on one store:
#   cold    a new store, its first BENCH_COLD messages (8 conns × window 1);
#   warm-up BENCH_WARMUP messages (8 × 32, not reported);
#   steady  BENCH_MESSAGES messages each, 8 × 1 and 8 × 32;
#   restart the daemon stopped and started again on that store, metrics on:
#           BENCH_MESSAGES each, 8 × 1 and 8 × 32.
# The null responder's figures are each the median of three runs, and every
# scenario prints the CPU time stolen by the hypervisor during it (steal%).
# Then, when PostgreSQL is installed, the same on a throwaway local server
# (tests/bench/pg_bench.py: cold, warm-up, steady on a new database; its
# ratios use the null responder's rates above).
#   BENCH_COLD (60000), BENCH_WARMUP (150000), BENCH_MESSAGES (60000),
#   BENCH_FILE (the 600-byte ADT^A01), BENCH_AUDIT_MESSAGES (200000),
#   BENCH_AUDIT_WARMUP (150000) and BENCH_BACKLOG (500000) for the audit
#   sink: rows/s MLLP in → connector emulator after a warm-up, and the time
#   to push a backlog of that many rows.  BENCH_INGEST_ONLY=1 stops after
#   the ingest table (for A/B runs of two builds: `scripts/bench.sh DIR`
#   takes hl7bridge and bench/ from DIR).
set -u
cd "$(dirname "$0")/.."
build=${1:-build}
cold=${BENCH_COLD:-60000}
warm=${BENCH_WARMUP:-150000}
msgs=${BENCH_MESSAGES:-60000}
file=${BENCH_FILE:-tests/fixtures/bench/adt-a01-600b.hl7}
work=$(mktemp -d -p "$PWD/var" bench.XXXXXX 2>/dev/null || { mkdir -p var; mktemp -d -p "$PWD/var" bench.XXXXXX; })
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
load1() { cut -d' ' -f1 /proc/loadavg; }
# CPU time stolen by the hypervisor, and all CPU time, in ticks since boot
# (/proc/stat's cpu line): on a shared VM a scenario run while another guest
# takes the cores measures that guest, so each scenario says how much of
# its time was stolen.
cpu_ticks() { awk '/^cpu /{t=0; for (i=2; i<=NF; i++) t+=$i; print $9, t; exit}' /proc/stat; }

declare -A res

# load NAME PORT CONNS WINDOW MESSAGES: one loadgen run, kept as res[NAME].
load() {
    local out s0 s1
    s0=$(cpu_ticks)
    out=$("$build"/bench/loadgen --addr 127.0.0.1:"$2" --conns "$3" --window "$4" \
          --messages "$5" --file "$file") || { echo "bench: loadgen failed ($1): $out"; exit 1; }
    s1=$(cpu_ticks)
    grep -q ' not_aa=0 ' <<<"$out" || { echo "bench: not every message got AA ($1): $out"; exit 1; }
    res["$1"]="$out load=$(load1) steal=$(awk -v a="$s0" -v b="$s1" 'BEGIN{split(a,x," ");
        split(b,y," "); t=y[2]-x[2]; printf "%.1f", (t > 0 ? 100*(y[1]-x[1])/t : 0)}')"
    echo "$1 conns=$3 window=$4: ${res[$1]}"
}

# load_median NAME PORT CONNS WINDOW MESSAGES: three runs, the one with the
# median rate kept as res[NAME].  For the null responder, the denominator of
# every ratio: one short run of it swung by 2x between runs on a shared VM.
load_median() {
    local runs=() r
    for r in 1 2 3; do
        load "$1" "$2" "$3" "$4" "$5"
        runs+=("$(grep -oE ' rate=[0-9.]+' <<<"${res[$1]}" | cut -d= -f2) ${res[$1]}")
    done
    res["$1"]=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p | cut -d' ' -f2-)
    echo "$1 (median of 3): ${res[$1]}"
}

echo "bench: $(wc -c < "$file")-byte message; cold $cold, warm-up $warm, then $msgs per scenario"
port=$(free_port)
"$build"/bench/null_responder --port "$port" > "$work/null.log" 2>&1 & pids+=($!)
wait_port "$port" || { echo "bench: null responder did not start"; exit 1; }
load_median null-8x1 "$port" 8 1 "$msgs"
# Five times the messages at 8 x 32: the responder answers them in about a
# tenth of a second otherwise, too short to time.
load_median null-8x32 "$port" 8 32 $((msgs * 5))
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null

port=$(free_port); mport=$(free_port)
start_hb() { # log-name metrics(true|false)
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
load cold-8x1 "$port" 8 1 "$cold"
load warm-up "$port" 8 32 "$warm"
load steady-8x1 "$port" 8 1 "$msgs"
load steady-8x32 "$port" 8 32 "$msgs"
kill -TERM "$hb"; wait "$hb" 2>/dev/null
start_hb restart true
load restart-8x1 "$port" 8 1 "$msgs"
load restart-8x32 "$port" 8 32 "$msgs"
kill -TERM "$hb"; wait "$hb" 2>/dev/null

field() { grep -oE "$2=[0-9.]+" <<<"$1" | cut -d= -f2; }
{
echo
printf '%-22s %11s %11s %7s %9s %9s %6s %6s\n' phase null_msg/s hl7b_msg/s ratio p50_us p99_us \
    load steal%
for row in cold-8x1:null-8x1 steady-8x1:null-8x1 steady-8x32:null-8x32 \
           restart-8x1:null-8x1 restart-8x32:null-8x32; do
    h=${res[${row%%:*}]}; n=${res[${row##*:}]}
    nr=$(field "$n" rate); hr=$(field "$h" rate)
    ratio=$(awk -v a="$hr" -v b="$nr" 'BEGIN{printf "%.3f", a/b}')
    printf '%-22s %11s %11s %7s %9s %9s %6s %6s\n' "${row%%:*}" "$nr" "$hr" "$ratio" \
        "$(field "$h" p50_us)" "$(field "$h" p99_us)" "$(field "$h" load)" "$(field "$h" steal)"
done
echo "(ratio = hl7bridge / null responder, same load, same run; each fsyncs every accepted"
echo " message before its ACK; cold = a new store's first $cold messages, steady = after"
echo " $((cold + warm)), restart = the same store after a restart with metrics on;"
echo " load = 1-minute load average of the machine when the scenario ended; steal% = CPU"
echo " time the hypervisor gave to other guests during the scenario: above a few per cent"
echo " the scenario measured them too; null = the median of three runs)"
# The writer's own account (cold + warm-up + steady): how many messages
# shared a commit and what a commit cost, fsync included.
grep -o 'event=store_close.*' "$work/hl7bridge.log" | sed 's/^event=store_close/store writer:/' || true
# The same phases on PostgreSQL, beside the figures above (same null
# responder and SQLite rates), when the server binaries are installed.
echo
if /usr/bin/python3 -c 'import sys; sys.path.insert(0, "tests/integration"); import pgserver
sys.exit(0 if pgserver.available() else 1)'; then
    BENCH_NULL="8x1=$(field "${res[null-8x1]}" rate),8x32=$(field "${res[null-8x32]}" rate)" \
    BENCH_SQLITE="8x1=$(field "${res[steady-8x1]}" rate),8x32=$(field "${res[steady-8x32]}" rate)" \
    BENCH_MESSAGES=$msgs /usr/bin/python3 tests/bench/pg_bench.py "$build" ||
        echo "bench: the PostgreSQL phase failed"
else
    echo "(no PostgreSQL figures: PostgreSQL is not installed; scripts/deps.sh test installs it)"
fi
[ -n "${BENCH_INGEST_ONLY:-}" ] && exit 0
if [ -x "$build/bench/bench_mapping" ]; then echo; "$build/bench/bench_mapping"; fi
echo
/usr/bin/python3 tests/bench/audit_bench.py --messages "${BENCH_AUDIT_MESSAGES:-200000}" \
    --warmup "${BENCH_AUDIT_WARMUP:-150000}" --backlog "${BENCH_BACKLOG:-500000}"
} | tee "$build/bench-results.txt"
