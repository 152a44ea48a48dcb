"""`make soak`: a long run through the shipped configuration, sampled every
few seconds, to show whether hl7bridge stays flat once retention purges.

    /usr/bin/python3 tests/bench/soak.py        (from the project root, after
                                                 `make` and `make build/bench/loadgen`)

The daemon runs config/hl7bridge.yaml as shipped, with only what a run on
loopback needs changed: the listener and metrics addresses, the store and
sink paths under the run's directory, a users table (so every ADT^A01 yields
a connector row), a short retention (store.retention raw and delivered), and
the audit sink.  The audit sink is by default the connector itself (type
purview) pointed at the strict HTTPS connector emulator of the integration
tests: that is the path rows take in production (token, multipart blocks,
retries), its memory is part of the daemon's, and every accepted block is
checked field by field; SOAK_SINK=file uses the shipped file sink instead.

loadgen sends the messages (SOAK_CONNS connections, SOAK_WINDOW in flight
on each) and prints every SOAK_INTERVAL_S seconds the rate and ACK latencies
of that interval; at each of its lines this script samples the daemon's RSS
and CPU, the database and WAL file sizes, and from /status the rows not yet
delivered and the records retention purged.  At the end: the table (also
written as soak.tsv), a PNG (soak.png, gnuplot) in SOAK_OUT, and one
PASS/FAIL line per criterion of the soak target.  The soak reports; it is
not a test: its exit status is 0 when the run completed, whatever the
criteria say, and 1 when it could not run.

Environment (defaults meet issue 13's soak):
  SOAK_MESSAGES     5000000   messages to send
  SOAK_CONNS        8         connections
  SOAK_WINDOW       1         messages in flight per connection
  SOAK_INTERVAL_S   10        seconds between samples
  SOAK_RETENTION    1m        store.retention raw and delivered (a duration:
                              30s, 1m, 10m…); short enough that purging runs
                              during the run
  SOAK_RAW_RETENTION  SOAK_RETENTION  store.retention.raw alone
  SOAK_SINK         purview   purview (connector emulator) or file
  SOAK_MAX_SECONDS  3600      the load stops after this long whatever it reached
  SOAK_FILE         tests/fixtures/bench/adt-a01-600b.hl7
  SOAK_OUT          build/soak  where the table, PNG and daemon log go
  SOAK_KEEP         0         1 keeps the store and sink output in SOAK_OUT/work

Bounded: every wait has a deadline, everything listens on 127.0.0.1, and the
daemon and emulator are stopped at the end.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

try:
    import yaml
except ImportError:
    sys.exit("soak: needs PyYAML (Debian package python3-yaml; scripts/deps.sh bench)")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from emulator import Emulator, make_pki  # noqa: E402

TOLERANCE = 0.10          # the soak target: within 10 %
LEVEL_SLACK_MIB = 4.0     # sizes this close are level whatever the ratio
# How long undelivered rows may take to drain at the end: the last open
# block seals by age (the shipped sinks.audit.batch.max_age_s is 300 s)
# and then needs its upload, so the wait must outlast the age.
DRAIN_S = 420


def env(name, default):
    return os.environ.get(name, "") or default


def env_int(name, default, lo, hi):
    raw = env(name, str(default))
    try:
        v = int(raw)
    except ValueError:
        sys.exit(f"soak: {name}={raw!r} is not a whole number")
    if not lo <= v <= hi:
        sys.exit(f"soak: {name}={v} is outside {lo}..{hi}")
    return v


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, log, deadline_s=20):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"soak: hl7bridge exited with {proc.returncode}:\n{Path(log).read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("soak: hl7bridge did not open its port")


def duration_s(text):
    """Seconds of a config duration (30s, 1m, 1h30m, 2d)."""
    m = re.fullmatch(r"((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?", text.strip())
    if not text.strip() or not m:
        sys.exit(f"soak: SOAK_RETENTION={text!r} is not a duration like 30s, 1m, 2h")
    d, h, mi, se = (int(m.group(i) or 0) for i in (2, 4, 6, 8))
    return ((d * 24 + h) * 60 + mi) * 60 + se


def soak_config(work, mllp, mport, emu_port, ca, retention, sink):
    """The shipped configuration with only the run's own settings changed."""
    cfg = yaml.safe_load((ROOT / "config" / "hl7bridge.yaml").read_text())
    cfg["listen"][0]["address"] = f"127.0.0.1:{mllp}"
    st = cfg["store"]
    st["path"] = str(work / "store" / "hl7bridge.db")
    st["retention"]["raw"] = env("SOAK_RAW_RETENTION", retention)
    st["retention"]["delivered"] = retention
    if sink == "file":   # the key's own minimum is a minute
        st["retention"]["audit_files"] = retention if duration_s(retention) >= 60 else "1m"
    cfg["mapping"]["lookups"] = {"users": {"file": str(ROOT / "tests/fixtures/bench/users.csv"),
                                           "key_column": "ehr_id", "value_column": "upn"}}
    audit = cfg["sinks"]["audit"]
    if sink == "purview":
        audit.update({"type": "purview", "tenant_id": "tenant-1", "app_id": "app-1",
                      "app_secret": "${SOAK_SECRET}", "job_id": "job-1",
                      "token_url": f"https://127.0.0.1:{emu_port}/tenant-1/oauth2/token"
                                   "?api-version=1.0",
                      "upload_url": f"https://127.0.0.1:{emu_port}/api/signals",
                      "ca_file": ca})
    audit["directory"] = str(work / "out")
    cfg["sinks"]["sms"]["path"] = str(work / "sms.jsonl")
    cfg["metrics"]["address"] = f"127.0.0.1:{mport}"
    cfg["metrics"]["enabled"] = True
    return yaml.safe_dump(cfg, sort_keys=False)


def rss_mib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def cpu_s(pid):
    """User + system CPU seconds of the process (all threads)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def size_mib(path):
    try:
        return os.stat(path).st_size / 1048576.0
    except OSError:
        return 0.0


def dir_mib(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total / 1048576.0


def status(mport):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/status", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def undelivered(st):
    """Rows the audit sink has not delivered yet (None if /status did not answer)."""
    if not st:
        return None
    return sum(s.get("rows_pending", 0) for s in st.get("sinks", []) if s.get("name") == "audit")


def purged(st):
    """Delivered messages retention purged so far."""
    if not st:
        return None
    kinds = st.get("store", {}).get("retention", {}).get("kinds", [])
    if not kinds:
        kinds = st.get("retention", {}).get("kinds", [])
    return sum(k.get("purged", 0) for k in kinds if k.get("kind") == "delivered")


def fields(line):
    out = {}
    for part in line.split()[1:]:
        k, _, v = part.partition("=")
        out[k] = float(v)
    return out


def level(values, start):
    """Level once retention runs: the largest value of the second half of the
    samples from `start` on is within TOLERANCE (or LEVEL_SLACK_MIB) of the
    largest of the first half.  Returns (ok, first, second)."""
    v = values[start:]
    if len(v) < 4:
        return None, 0.0, 0.0
    half = len(v) // 2
    a, b = max(v[:half]), max(v[half:])
    return b <= a * (1 + TOLERANCE) or b - a <= LEVEL_SLACK_MIB, a, b


def plot(out, tsv, title, purge_t, gnuplot, sink):
    png = out / "soak.png"
    mark = (f"set arrow from {purge_t},graph 0 to {purge_t},graph 1 nohead dt 2 lc rgb 'gray40'\n"
            if purge_t is not None else "")
    if sink == "purview":
        delivered = ", \\\n     '' using 1:10 with linespoints title 'rows accepted/s (connector emulator)'"
        files = ""
    else:
        delivered = ""
        files = ", \\\n     '' using 1:11 with linespoints title 'audit file sink output'"
    script = f"""set terminal pngcairo size 1400,1000 font 'DejaVu Sans,10'
set output '{png}'
set datafile separator '\\t'
set key below
set grid
set xlabel 'time since the first message (s)'
set multiplot layout 2,2 title "{title}\\n(dashed line: first purge by retention)"
{mark}
set title 'Throughput'
set ylabel 'messages/s'
set yrange [0:*]
plot '{tsv}' using 1:2 with linespoints title 'messages acknowledged/s (loadgen)'{delivered}
set title 'ACK latency (loadgen, per interval)'
set ylabel 'ms'
plot '{tsv}' using 1:($4/1000) with linespoints title 'p99', \\
     '' using 1:($3/1000) with linespoints title 'p50'
set title 'Memory and files'
set ylabel 'MiB'
plot '{tsv}' using 1:5 with linespoints title 'daemon RSS', \\
     '' using 1:6 with linespoints title 'database file', \\
     '' using 1:7 with linespoints title 'WAL file'{files}
set title 'Backlog and retention'
set ylabel 'undelivered rows'
set y2label 'messages purged since start'
set format y '%.1s%c'
set format y2 '%.1s%c'
set y2range [0:*]
set y2tics
set ytics nomirror
plot '{tsv}' using 1:8 with linespoints title 'undelivered rows (left)', \\
     '' using 1:9 axes x1y2 with linespoints title 'messages purged, cumulative (right)'
unset multiplot
"""
    gp = out / "soak.gp"
    gp.write_text(script)
    r = subprocess.run([gnuplot, str(gp)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        print(f"soak: gnuplot failed: {r.stderr.strip()}")
        return None
    return png


def main():
    msgs = env_int("SOAK_MESSAGES", 5000000, 1000, 100000000)
    conns = env_int("SOAK_CONNS", 8, 1, 1000)
    window = env_int("SOAK_WINDOW", 1, 1, 10000)
    interval = env_int("SOAK_INTERVAL_S", 10, 1, 3600)
    max_s = env_int("SOAK_MAX_SECONDS", 3600, 10, 864000)
    retention = env("SOAK_RETENTION", "1m")
    sink = env("SOAK_SINK", "purview")
    if sink not in ("purview", "file"):
        sys.exit(f"soak: SOAK_SINK={sink!r}: purview or file")
    fixture = Path(env("SOAK_FILE", str(ROOT / "tests/fixtures/bench/adt-a01-600b.hl7")))
    out = Path(env("SOAK_OUT", str(ROOT / "build" / "soak"))).resolve()
    keep = env("SOAK_KEEP", "0") == "1"
    build = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "build").resolve()
    binary, loadgen = build / "hl7bridge", build / "bench" / "loadgen"
    for p in (binary, loadgen):
        if not p.exists():
            sys.exit(f"soak: {p} is missing (make all build/bench/loadgen)")

    work = out / "work"
    shutil.rmtree(work, True)
    work.mkdir(parents=True)
    (work / "store").mkdir()
    os.environ["SOAK_SECRET"] = "soak-secret"
    mllp, mport, emu_port = free_port(), free_port(), free_port()
    ca = cert = key = None
    if sink == "purview":
        ca, cert, key = make_pki(work / "pki")
    cfg = work / "soak.yaml"
    cfg.write_text(soak_config(work, mllp, mport, emu_port, ca, retention, sink))
    chk = subprocess.run([str(binary), "check", "-c", str(cfg)], capture_output=True, text=True)
    if chk.returncode != 0:
        sys.exit(f"soak: the soak configuration does not load:\n{chk.stdout}{chk.stderr}")
    mapped = subprocess.run([str(binary), "map", "-c", str(cfg), str(fixture)],
                            capture_output=True)
    lines = [ln for ln in mapped.stdout.decode().split("\r\n") if ln]
    if mapped.returncode != 0 or len(lines) < 2:
        sys.exit(f"soak: {fixture} yields no connector row with the soak configuration "
                 f"({mapped.stderr.decode().strip()})")
    header, rows_per_msg = lines[0], len(lines) - 1

    emu = None
    if sink == "purview":
        emu = Emulator(cert, key, header, tenant="tenant-1", client_id="app-1",
                       secret="soak-secret", job_id="job-1", port=emu_port, keep_rows=False)
        emu.start()
    log = out / "hl7bridge.log"
    daemon = subprocess.Popen([str(binary), "run", "-c", str(cfg)], cwd=str(ROOT),
                              stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    samples, tenths, final = [], [], ""
    lg = None
    try:
        wait_port(mllp, daemon, log)
        print(f"soak: {msgs:,} messages of {fixture.stat().st_size} bytes ({rows_per_msg} row each),"
              f" {conns} connections x window {window}, retention {retention}, audit sink "
              f"{'connector emulator' if emu else 'file'}, a sample every {interval} s",
              flush=True)
        cols = ("t_s", "msg/s", "p50_us", "p99_us", "rss_MiB", "db_MiB", "wal_MiB",
                "undelivered", "purged", "rows/s", "out_MiB", "cpu_%")
        print("".join(f"{c:>12}" for c in cols), flush=True)
        lg = subprocess.Popen([str(loadgen), "--addr", f"127.0.0.1:{mllp}", "--conns", str(conns),
                               "--window", str(window), "--messages", str(msgs),
                               "--file", str(fixture), "--interval", str(interval),
                               "--max-seconds", str(max_s)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        db = work / "store" / "hl7bridge.db"
        wal = Path(str(db) + "-wal")
        last_t, last_rows, last_cpu = 0.0, 0, cpu_s(daemon.pid)
        file_rows_base = 0
        for line in lg.stdout:
            if line.startswith("tenth "):
                tenths.append(fields(line))
                continue
            if not line.startswith("interval "):
                final = line.strip() or final
                continue
            f = fields(line)
            if samples and f["t"] - last_t < interval / 2:
                continue   # the last few messages after the last full interval
            st = status(mport)
            rows = emu.accepted_count() if emu else file_rows_base
            cpu = cpu_s(daemon.pid)
            dt = max(f["t"] - last_t, 1e-3)
            s = {"t_s": f["t"], "msg/s": f["rate"], "p50_us": f["p50_us"], "p99_us": f["p99_us"],
                 "rss_MiB": rss_mib(daemon.pid), "db_MiB": size_mib(db), "wal_MiB": size_mib(wal),
                 "undelivered": undelivered(st), "purged": purged(st),
                 "rows/s": (rows - last_rows) / dt if emu else float("nan"),
                 "out_MiB": dir_mib(work / "out"), "cpu_%": 100.0 * (cpu - last_cpu) / dt}
            last_t, last_rows, last_cpu = f["t"], rows, cpu
            samples.append(s)
            print("".join(fmt(s[c]) for c in cols), flush=True)
        lg.wait(60)
        err = lg.stderr.read()
        if lg.returncode != 0:
            print(f"soak: loadgen: {final} {err.strip()}")

        # Drain: the rows still undelivered at the end must go out.
        drain_t0 = time.monotonic()
        pending = undelivered(status(mport))
        while pending and time.monotonic() - drain_t0 < DRAIN_S:
            time.sleep(0.5)
            pending = undelivered(status(mport))
        drain_s = time.monotonic() - drain_t0
        end_status = status(mport)
    finally:
        if lg and lg.poll() is None:
            lg.kill()
            lg.wait()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        if emu:
            emu.stop()
    report(out, samples, tenths, final, pending, drain_s, end_status, emu, msgs, retention, sink,
           conns, window, log)
    if not keep:
        shutil.rmtree(work, True)


def fmt(v):
    if v is None:
        return f"{'-':>12}"
    if isinstance(v, float) and v != v:
        return f"{'-':>12}"
    if isinstance(v, float) and abs(v) < 1000 and v != int(v):
        return f"{v:>12.1f}"
    return f"{int(v):>12}"


def report(out, samples, tenths, final, pending, drain_s, end_status, emu, msgs, retention,
           sink, conns, window, log):
    cols = ("t_s", "msg/s", "p50_us", "p99_us", "rss_MiB", "db_MiB", "wal_MiB", "undelivered",
            "purged", "rows/s", "out_MiB", "cpu_%")
    tsv = out / "soak.tsv"
    with open(tsv, "w") as f:
        f.write("\t".join(cols) + "\n")
        for s in samples:
            f.write("\t".join("NaN" if s[c] is None or s[c] != s[c] else f"{s[c]:.3f}"
                              for c in cols) + "\n")
    print(f"\nloadgen: {final}")
    if tenths:
        print("tenths of the run (by messages):")
        for t in tenths:
            print(f"  {int(t['k']):>2}: {t['rate']:>9,.0f} msg/s  p50 {t['p50_us'] / 1000:6.2f} ms"
                  f"  p99 {t['p99_us'] / 1000:6.2f} ms  max {t['max_us'] / 1000:7.1f} ms")
    purge_i = next((i for i, s in enumerate(samples) if s["purged"]), None)
    purge_t = samples[purge_i]["t_s"] if purge_i is not None else None
    title = (f"hl7bridge soak: {msgs:,} messages, {conns} conns x window {window}, retention "
             f"{retention}, audit sink {'connector emulator' if sink == 'purview' else 'file'}")
    gnuplot = shutil.which("gnuplot")
    png = plot(out, tsv, title, purge_t, gnuplot, sink) if gnuplot and samples else None
    print(f"table: {tsv}")
    print(f"chart: {png}" if png else "chart: not drawn (gnuplot missing: scripts/deps.sh bench)")
    print(f"daemon log: {log}")

    verdicts = []

    def verdict(ok, name, detail):
        word = "PASS" if ok else ("FAIL" if ok is False else "N/A ")
        verdicts.append(ok)
        print(f"{word} {name}: {detail}")

    print()
    done = bool(final) and f"messages={msgs} " in final
    verdict(done and "not_aa=0" in final and "errors=0" in final, "run complete",
            f"every message acknowledged AA in order ({final.split(' rate=')[0] or 'no result'})")
    if len(tenths) == 10:
        a, b = tenths[0]["rate"], tenths[9]["rate"]
        verdict(b >= a * (1 - TOLERANCE), "throughput",
                f"last 10% {b:,.0f} msg/s vs first 10% {a:,.0f} msg/s ({b / a:.2f}; >= "
                f"{1 - TOLERANCE:.2f} passes)")
        a, b = tenths[0]["p99_us"], tenths[9]["p99_us"]
        verdict(b <= a * (1 + TOLERANCE), "ACK p99",
                f"last 10% {b / 1000:.2f} ms vs first 10% {a / 1000:.2f} ms ({b / a:.2f}; <= "
                f"{1 + TOLERANCE:.2f} passes)")
    else:
        verdict(False, "throughput", "the run did not reach its last tenth")
        verdict(False, "ACK p99", "the run did not reach its last tenth")
    if purge_i is None:
        verdict(False, "retention ran", f"nothing was purged during the run (retention {retention})")
    else:
        verdict(True, "retention ran",
                f"first purge seen at t={purge_t:.0f} s, {samples[-1]['purged']:,.0f} delivered "
                f"messages purged by the end of the load")
        for c, name in (("rss_MiB", "daemon RSS"), ("db_MiB", "database file"),
                        ("wal_MiB", "WAL file"), ("out_MiB", "audit file sink output")):
            if sink == "purview" and c == "out_MiB":
                continue
            ok, a, b = level([s[c] for s in samples], purge_i)
            verdict(ok, f"{name} level",
                    f"max {a:.1f} MiB in the first half of the samples since the first purge, "
                    f"{b:.1f} MiB in the second half" if ok is not None
                    else "too few samples since the first purge")
        und = [s["undelivered"] or 0 for s in samples]
        ok, a, b = level(und, purge_i)
        verdict(b <= a * (1 + TOLERANCE) + 5000 if ok is not None else None, "undelivered rows level",
                f"max {a:,.0f} rows in the first half of the samples since the first purge, "
                f"{b:,.0f} in the second half (a block is 5,000 rows)")
    verdict(pending == 0, "delivered", f"undelivered rows {pending} after {drain_s:.0f} s of drain")
    if emu:
        verdict(not emu.violations, "connector protocol",
                f"{emu.accepted_count():,} rows in {len(emu.uploads)} uploads, "
                f"{len(emu.violations)} violations")
    errs = [ln for ln in Path(log).read_text(errors="replace").splitlines() if "level=error" in ln]
    verdict(not errs, "daemon log", f"{len(errs)} error lines" + (f": {errs[0][:200]}" if errs else ""))
    if end_status:
        st = end_status.get("store", {})
        print(f"store writer over the run: {st.get('messages')} messages in {st.get('commits')} "
              f"commits (largest group {st.get('max_group')}, {st.get('commit_us_avg')} µs per "
              f"commit on average)")


if __name__ == "__main__":
    main()
