#!/usr/bin/python3
"""hl7bridge on PostgreSQL (and on SQLite) against the null MLLP responder,
same load, same run.

Starts a throwaway PostgreSQL server (tests/integration/pgserver.py: local,
default settings, synchronous_commit on), one node on it, and runs the
project's load generator in the scenarios of `make bench` (8 connections x
window 1, 8 x 32) against the null responder and against the node; prints
messages/s and the ratios.  Compare ratios, not absolute figures.

    /usr/bin/python3 tests/bench/pg_bench.py [BUILD]     (default build)
    BENCH_MESSAGES (default 50000), BENCH_FILE (the 600-byte ADT^A01)
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


def load(build, port, conns, window, msgs, file):
    out = subprocess.run([str(build / "bench" / "loadgen"), "--addr", f"127.0.0.1:{port}",
                          "--conns", str(conns), "--window", str(window), "--messages", str(msgs),
                          "--file", str(file)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen: {out.stdout}{out.stderr}")
    return out.stdout.strip()


def rate(line):
    m = re.search(r"msgs_per_s=([0-9.]+)", line) or re.search(r"rate=([0-9.]+)", line)
    return float(m.group(1)) if m else float("nan")


def run_node(build, work, name, store_yaml, env, msgs, file, res, procs):
    """One node with `store_yaml` under `store:`, no sinks, metrics off; runs
    the scenarios into res[(name, conns, window)] and stops it."""
    port = free_port()
    cfg = work / f"{name}.yaml"
    cfg.write_text(f"listen:\n  - name: bench\n    address: 127.0.0.1:{port}\nstore:\n{store_yaml}"
                   "log:\n  level: info\nsinks:\n  audit:\n    type: none\n  sms:\n"
                   "    type: none\nmetrics:\n  enabled: false\n")
    with open(work / f"{name}.log", "wb") as log:
        hb = subprocess.Popen([str(build / "hl7bridge"), "run", "-c", str(cfg)], stdout=log,
                              stderr=log, env=dict(os.environ, **env))
    procs.append(hb)
    wait_port(port, hb)
    for c, w in SCENARIOS:
        res[(name, c, w)] = load(build, port, c, w, msgs, file)
        print(f"hl7bridge-{name} conns={c} window={w}: {res[(name, c, w)]}", flush=True)
    hb.terminate()
    hb.wait(60)


def main():
    build = ROOT / (sys.argv[1] if len(sys.argv) > 1 else "build")
    msgs = int(os.environ.get("BENCH_MESSAGES", "50000"))
    file = Path(os.environ.get("BENCH_FILE", ROOT / "tests/fixtures/bench/adt-a01-600b.hl7"))
    if not pgserver.available():
        sys.exit(f"pg_bench: PostgreSQL not found in {pgserver.PG_BIN} (scripts/deps.sh test)")
    work = Path(tempfile.mkdtemp(prefix="hl7bridge-pgbench-"))
    res = {}
    server = pgserver.PgServer().start()
    procs = []
    try:
        port = free_port()
        null = subprocess.Popen([str(build / "bench" / "null_responder"), "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(null)
        wait_port(port, null)
        for c, w in SCENARIOS:
            res[("null", c, w)] = load(build, port, c, w, msgs, file)
            print(f"null conns={c} window={w}: {res[('null', c, w)]}", flush=True)
        null.terminate()
        null.wait(30)

        # SQLite, the single-node default, in the same run; then PostgreSQL
        run_node(build, work, "sqlite", f"  path: {work}/store/hl7bridge.db\n", {}, msgs, file,
                 res, procs)
        db = server.create_db("bench")
        run_node(build, work, "pg",
                 f"  type: postgresql\n  url: \"{server.url(db)}\"\n"
                 f"  password: ${{HB_BENCH_PG_PASSWORD}}\n  path: {work}/unused.db\n",
                 {"HB_BENCH_PG_PASSWORD": pgserver.PASSWORD}, msgs, file, res, procs)
        closing = [ln for ln in (work / "pg.log").read_text().splitlines() if "store_close" in ln]
        stored = server.psql("SELECT COUNT(*) FROM messages", db)[0][0]
        print(f"stored: {stored} messages; {closing[-1] if closing else ''}")
        print(f"{'scenario':<10} {'null msg/s':>11} {'sqlite':>9} {'ratio':>6} {'pg msg/s':>9}"
              f" {'ratio':>6}")
        for c, w in SCENARIOS:
            n, q, p = (rate(res[(k, c, w)]) for k in ("null", "sqlite", "pg"))
            print(f"{c}x{w:<8} {n:11.0f} {q:9.0f} {q / n:6.3f} {p:9.0f} {p / n:6.3f}")
        print("load average:", open("/proc/loadavg").read().split()[:3])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        server.close()
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
