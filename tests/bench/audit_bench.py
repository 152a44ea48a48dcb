"""Audit-sink throughput on loopback (run from the project root after `make`
and `make build/bench/loadgen`):

    /usr/bin/python3 tests/bench/audit_bench.py [--messages 200000] [--warmup 0]
        [--backlog 500000] [--max-rows 5000] [--parallel 2]

1. live: loadgen sends --warmup ADT^A01 messages (not measured; their rows
   are awaited), then --messages more; the figure is rows accepted by the
   HTTPS connector emulator per second, from the first measured message sent
   to the last row accepted.  Each message yields one row (EVN-5 is in the
   bench users table).
2. backlog: --backlog messages are stored while the connector is
   unreachable; then the daemon is restarted with it reachable, and the
   figure is the time from that start to the last row accepted.

Bounded: every wait has a deadline, everything runs on 127.0.0.1, and the
daemon and emulator are stopped at the end.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from emulator import Emulator, make_pki  # noqa: E402

BIN = ROOT / "build" / "hl7bridge"
LOADGEN = ROOT / "build" / "bench" / "loadgen"
FIXTURE = ROOT / "tests" / "fixtures" / "bench" / "adt-a01-600b.hl7"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(work, mllp_port, emu_port, max_rows, parallel, ca):
    return f"""listen:
  - name: bench
    address: 127.0.0.1:{mllp_port}
store:
  path: {work}/store.db
  min_free_disk_mb: 0
log:
  level: warn
mapping:
  lookups:
    users: {{file: {ROOT}/tests/fixtures/bench/users.csv, key_column: ehr_id, value_column: upn}}
sinks:
  audit:
    type: purview
    tenant_id: tenant-1
    app_id: app-1
    app_secret: ${{BENCH_SECRET}}
    job_id: job-1
    token_url: https://127.0.0.1:{emu_port}/tenant-1/oauth2/token?api-version=1.0
    upload_url: https://127.0.0.1:{emu_port}/api/signals
    ca_file: {ca}
    batch: {{max_rows: {max_rows}, max_bytes: 256MiB, max_age_s: 1}}
    max_parallel_uploads: {parallel}
metrics:
  enabled: false
"""


def start_daemon(cfg, log):
    p = subprocess.Popen([str(BIN), "run", "-c", str(cfg)], cwd=str(ROOT),
                         stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    return p


def wait_port(port, deadline_s=15):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("daemon did not start")


def wait_rows(emu, n, deadline_s):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and emu.accepted_count() < n:
        time.sleep(0.02)
    if emu.accepted_count() < n:
        raise SystemExit(f"only {emu.accepted_count()} of {n} rows arrived")


def loadgen(port, n):
    out = subprocess.run([str(LOADGEN), "--addr", f"127.0.0.1:{port}", "--conns", "8",
                          "--window", "32", "--messages", str(n), "--file", str(FIXTURE)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0 or "not_aa=0" not in out.stdout:
        raise SystemExit("loadgen: " + out.stdout + out.stderr)
    return out.stdout.strip()


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200000)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--backlog", type=int, default=500000)
    ap.add_argument("--max-rows", type=int, default=5000)
    ap.add_argument("--parallel", type=int, default=2)
    a = ap.parse_args()
    os.environ["BENCH_SECRET"] = "bench-secret"
    work = Path(tempfile.mkdtemp(prefix="hl7bridge-audit-bench-", dir="/tmp"))
    try:
        ca, cert, key = make_pki(work / "pki")
        header = subprocess.run([str(BIN), "map", str(FIXTURE)], cwd=str(ROOT),
                                capture_output=True).stdout.decode().split("\r\n", 1)[0]
        results = []

        # 1. live
        emu_port, mllp = free_port(), free_port()
        emu = Emulator(cert, key, header, tenant="tenant-1", client_id="app-1",
                       secret="bench-secret", job_id="job-1", port=emu_port, keep_rows=False)
        emu.start()
        cfg = work / "live.yaml"
        (work / "live").mkdir()
        cfg.write_text(config(work / "live", mllp, emu_port, a.max_rows, a.parallel, ca))
        d = start_daemon(cfg, work / "live.log")
        wait_port(mllp)
        if a.warmup:
            loadgen(mllp, a.warmup)
            wait_rows(emu, a.warmup, 300)
        t0 = time.monotonic()
        lg = loadgen(mllp, a.messages)
        t_in = time.monotonic() - t0
        wait_rows(emu, a.warmup + a.messages, 300)
        t_all = emu.last_accept - t0
        stop(d)
        emu.stop()
        results.append(f"live: {a.messages} messages after a warm-up of {a.warmup}, MLLP in {t_in:.2f} s ({lg}); "
                       f"all rows accepted after {t_all:.2f} s = {a.messages / t_all:,.0f} rows/s "
                       f"end to end (max_rows={a.max_rows}, parallel={a.parallel}, "
                       f"{len(emu.uploads)} uploads, violations={len(emu.violations)}; "
                       f"load {os.getloadavg()[0]:.2f})")
        print(results[-1], flush=True)

        # 2. backlog: store it with the connector unreachable, then push
        emu_port, mllp = free_port(), free_port()
        cfg = work / "backlog.yaml"
        (work / "backlog").mkdir()
        cfg.write_text(config(work / "backlog", mllp, emu_port, a.max_rows, a.parallel, ca))
        d = start_daemon(cfg, work / "backlog.log")
        wait_port(mllp)
        t0 = time.monotonic()
        loadgen(mllp, a.backlog)
        t_store = time.monotonic() - t0
        time.sleep(2)                  # the batcher seals the last block
        stop(d)
        emu = Emulator(cert, key, header, tenant="tenant-1", client_id="app-1",
                       secret="bench-secret", job_id="job-1", port=emu_port, keep_rows=False)
        emu.start()
        t0 = time.monotonic()
        d = start_daemon(cfg, work / "backlog.log")
        wait_rows(emu, a.backlog, 1800)
        t_push = emu.last_accept - t0
        stop(d)
        emu.stop()
        log = (work / "backlog.log").read_text()
        results.append(f"backlog: {a.backlog} rows stored in {t_store:.1f} s, pushed in "
                       f"{t_push:.1f} s = {a.backlog / t_push:,.0f} rows/s "
                       f"({len(emu.uploads)} uploads, violations={len(emu.violations)}); "
                       f"5,000,000 rows at that rate: {5e6 / (a.backlog / t_push) / 60:.1f} min; "
                       f"load {os.getloadavg()[0]:.2f}")
        print(results[-1], flush=True)
        errs = re.findall(r"level=error.*", log)
        if errs:
            print("daemon errors:", *errs[:5], sep="\n")
    finally:
        shutil.rmtree(work, True)


if __name__ == "__main__":
    main()
