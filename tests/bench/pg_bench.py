#!/usr/bin/python3
"""hl7bridge on PostgreSQL (and on SQLite) against the null MLLP responder,
same load, same run.

Starts a throwaway PostgreSQL server (tests/integration/pgserver.py: local,
default settings, synchronous_commit on), one node on a new database, and
runs the project's load generator in the scenarios of `make bench` against
the null responder and against the node; prints messages/s and the ratios.
Compare ratios, not absolute figures.  Like `make bench`, a node is
measured in phases on one new database: cold (its first BENCH_COLD
messages, 8 connections x window 1), a warm-up (BENCH_WARMUP, 8 x 32, not
reported), then steady 8 x 1 and 8 x 32 (BENCH_MESSAGES each).

    /usr/bin/python3 tests/bench/pg_bench.py [BUILD [BUILD...]]   (default build)

Several builds (A/B): each is measured on PostgreSQL in every round, in
turns (A B, then B A, ...), each on a new database; SQLite and the null
responder come from the first.  BENCH_ROUNDS (default 1) rounds.
BENCH_MESSAGES (default 50000), BENCH_COLD (20000), BENCH_WARMUP (50000),
BENCH_FILE (the 600-byte ADT^A01).  BENCH_NULL / BENCH_SQLITE
("8x1=RATE,8x32=RATE"): figures measured already in this run (scripts/bench.sh
passes its own), so that phase is skipped.
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import pgserver  # noqa: E402

SCENARIOS = [(8, 1), (8, 32)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not open")


def load1():
    return open("/proc/loadavg").read().split()[0]


def load(build, port, conns, window, msgs, file):
    out = subprocess.run([str(build / "bench" / "loadgen"), "--addr", f"127.0.0.1:{port}",
                          "--conns", str(conns), "--window", str(window), "--messages", str(msgs),
                          "--file", str(file)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen: {out.stdout}{out.stderr}")
    line = out.stdout.strip()
    if " not_aa=0 " not in line:
        raise RuntimeError(f"loadgen: not every message got AA: {line}")
    return f"{line} load={load1()}"


def cpu_s(pids):
    """CPU seconds (user + system) the processes `pids` used so far."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            total += (int(st[11]) + int(st[12])) / tck
        except (OSError, IndexError, ValueError):
            pass
    return total


def server_pids(server):
    """The server's processes: the postmaster and its children (backends,
    WAL writer, checkpointer...)."""
    try:
        pm = int((server.dir / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    out = [pm]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pm:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def field(line, name):
    m = re.search(rf"\b{name}=([0-9.]+)", line)
    return float(m.group(1)) if m else float("nan")


def run_node(build, work, name, store_yaml, env, cfg_phases, res, procs, server=None):
    """One node with `store_yaml` under `store:`, no sinks, metrics off;
    runs the phases into res[name][phase] (with cpu_us, the CPU time per
    message of the node and, given `server`, of the PostgreSQL server) and
    stops it; returns the writer's closing line (commits, average
    commit)."""
    port = free_port()
    cfg = work / f"{name}.yaml"
    cfg.write_text(f"listen:\n  - name: bench\n    address: 127.0.0.1:{port}\nstore:\n{store_yaml}"
                   "log:\n  level: info\nsinks:\n  audit:\n    type: none\n  sms:\n"
                   "    type: none\nmetrics:\n  enabled: false\n")
    logf = work / f"{name}.log"
    with open(logf, "wb") as log:
        hb = subprocess.Popen([str(build / "hl7bridge"), "run", "-c", str(cfg)], stdout=log,
                              stderr=log, env=dict(os.environ, **env))
    procs.append(hb)
    wait_port(port, hb)
    res[name] = {}
    for phase, c, w, msgs, file in cfg_phases:
        pids = [hb.pid] + (server_pids(server) if server else [])
        t0 = cpu_s(pids)
        line = load(build, port, c, w, msgs, file)
        res[name][phase] = f"{line} cpu_us={(cpu_s(pids) - t0) / msgs * 1e6:.0f}"
        if phase != "warm-up":
            print(f"{name} {phase} conns={c} window={w}: {res[name][phase]}", flush=True)
    hb.terminate()
    hb.wait(60)
    closing = [ln for ln in logf.read_text().splitlines() if "store_close" in ln]
    return closing[-1].split("event=store_close", 1)[-1].strip() if closing else ""


def given(var):
    """BENCH_NULL / BENCH_SQLITE: {"8x1": rate, "8x32": rate}, or None."""
    v = os.environ.get(var)
    if not v:
        return None
    out = {}
    for part in v.split(","):
        k, _, r = part.partition("=")
        out[k.strip()] = float(r)
    return out


def main():
    builds = [ROOT / b for b in (sys.argv[1:] or ["build"])]
    msgs = int(os.environ.get("BENCH_MESSAGES", "50000"))
    cold = int(os.environ.get("BENCH_COLD", "20000"))
    warm = int(os.environ.get("BENCH_WARMUP", "50000"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "1"))
    file = Path(os.environ.get("BENCH_FILE", ROOT / "tests/fixtures/bench/adt-a01-600b.hl7"))
    if not pgserver.available():
        sys.exit(f"pg_bench: PostgreSQL not found in {pgserver.PG_BIN} (scripts/deps.sh test)")
    phases = [("cold-8x1", 8, 1, cold, file), ("warm-up", 8, 32, warm, file)] + \
        [(f"steady-{c}x{w}", c, w, msgs, file) for c, w in SCENARIOS]
    work = Path(tempfile.mkdtemp(prefix="hl7bridge-pgbench-"))
    res, closing = {}, {}
    null_given, sqlite_given = given("BENCH_NULL"), given("BENCH_SQLITE")
    print(f"pg_bench: {file.stat().st_size}-byte message; cold {cold}, warm-up {warm}, then "
          f"{msgs} per scenario; {rounds} round(s) of {len(builds)} build(s)", flush=True)
    server = pgserver.PgServer().start()
    procs = []
    try:
        b0 = builds[0]
        if null_given is None:
            port = free_port()
            null = subprocess.Popen([str(b0 / "bench" / "null_responder"), "--port", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(null)
            wait_port(port, null)
            null_given = {}
            for c, w in SCENARIOS:
                line = load(b0, port, c, w, msgs, file)
                null_given[f"{c}x{w}"] = field(line, "rate")
                print(f"null conns={c} window={w}: {line}", flush=True)
            null.terminate()
            null.wait(30)
        if sqlite_given is None:
            run_node(b0, work, "sqlite", f"  path: {work}/store/hl7bridge.db\n", {}, phases, res,
                     procs)
            sqlite_given = {f"{c}x{w}": field(res["sqlite"][f"steady-{c}x{w}"], "rate")
                            for c, w in SCENARIOS}
        for r in range(rounds):
            order = list(enumerate(builds))
            if r % 2:
                order.reverse()
            for i, b in order:
                name = f"pg{i}.{r}" if len(builds) > 1 or rounds > 1 else "pg"
                db = server.create_db(f"bench_{i}_{r}")
                closing[name] = run_node(
                    b, work, name,
                    f"  type: postgresql\n  url: \"{server.url(db)}\"\n"
                    f"  password: ${{HB_BENCH_PG_PASSWORD}}\n  path: {work}/unused.db\n",
                    {"HB_BENCH_PG_PASSWORD": pgserver.PASSWORD}, phases, res, procs, server)
                stored = server.psql("SELECT COUNT(*) FROM messages", db)[0][0]
                print(f"{name}: {b}: stored {stored} messages; writer: {closing[name]}",
                      flush=True)

        print()
        print("PostgreSQL (local server, default settings, synchronous_commit on) beside SQLite;"
              " ratio = msg/s / null responder's, same run; cpu_us = CPU time per message of"
              " the node and the server")
        print(f"{'phase':<13} {'null msg/s':>10} {'sqlite':>8} {'ratio':>6}   "
              + "  ".join(f"{'pg' + (str(i) if len(builds) > 1 else ''):>8} {'ratio':>6} "
                          f"{'p99_us':>7} {'cpu_us':>6}" for i in range(len(builds))))
        for phase in ["cold-8x1"] + [f"steady-{c}x{w}" for c, w in SCENARIOS]:
            sc = phase.split("-", 1)[1]
            n = null_given[sc]
            q = field(res["sqlite"][phase], "rate") if "sqlite" in res else \
                (sqlite_given.get(sc, float("nan")) if phase.startswith("steady") else float("nan"))
            cols = []
            for i in range(len(builds)):
                names = [k for k in res if k == "pg" or k.startswith(f"pg{i}.")]
                rates = sorted(field(res[k][phase], "rate") for k in names)
                p99 = sorted(field(res[k][phase], "p99_us") for k in names)
                cpu = sorted(field(res[k][phase], "cpu_us") for k in names)
                med = rates[len(rates) // 2]
                cols.append(f"{med:8.0f} {med / n:6.3f} {p99[len(p99) // 2]:7.0f}"
                            f" {cpu[len(cpu) // 2]:6.0f}")
            qs = f"{q:8.0f} {q / n:6.3f}" if q == q else f"{'-':>8} {'-':>6}"
            print(f"{phase:<13} {n:10.0f} {qs}   " + "  ".join(cols))
        if len(builds) > 1 or rounds > 1:
            print("(pg figures: the median of the rounds; builds: "
                  + ", ".join(f"pg{i} = {b}" for i, b in enumerate(builds)) + ")")
            for phase in ["cold-8x1"] + [f"steady-{c}x{w}" for c, w in SCENARIOS]:
                for i in range(len(builds)):
                    rates = [f"{field(res[k][phase], 'rate'):.0f}"
                             f" ({field(res[k][phase], 'cpu_us'):.0f})" for k in res
                             if k.startswith(f"pg{i}.")]
                    print(f"  {phase:<13} pg{i} each round, msg/s (CPU us/msg of node and"
                          f" server): {' '.join(rates)}")
        print("load average:", " ".join(open("/proc/loadavg").read().split()[:3]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        server.close()
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
