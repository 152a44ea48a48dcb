"""Monitoring: /metrics, /status, /healthz, /readyz, `hl7bridge stats` and the
daily totals, checked against a known mix of messages.

The mix (two listeners, two senders):
  listener it,  EPIC^HOSP  ADT^A01 x3 AA, one of them re-sent (duplicate, AA),
                           ADT^A01 version 3.0 (AR 203), ZZZ^Z01 (AE 200:
                           mapping.unmatched is reject)
  listener it2, LAB^WEST   ADT^A04 x2 AA, one re-sent (duplicate, AA),
                           a message without MSH-9 (AR 101)
Every counter these produce is checked on each surface.  `promtool check
metrics` runs on /metrics when promtool is installed.
"""

import json
import re
import shutil
import socket
import subprocess
import time
import unittest
import urllib.error
import urllib.request

from harness import ROOT, Daemon, OnPostgreSQL, free_port, make_message, require_binary

HTTP_TIMEOUT_S = 10
GAUGE_WAIT_S = 5  # gauges are sampled every second, health evaluated every second


class MetricsDaemon(Daemon):
    """A daemon with metrics on a free port, a second listener `it2`,
    unmatched messages rejected (to get AE) and low degraded thresholds."""

    def __init__(self, testcase, **opts):
        super().__init__(testcase, **opts)
        self.mport = free_port()
        self.port2 = free_port()

    def config_text(self, port):
        text = super().config_text(port)
        o = self.opts
        second = ("  - name: it2\n"
                  f"    address: 127.0.0.1:{self.port2}\n")
        text = text.replace("ack:\n", second + "ack:\n", 1)
        text = text.replace("mapping:\n", "mapping:\n  unmatched: reject\n", 1)
        metrics = ("metrics:\n"
                   f"  address: 127.0.0.1:{self.mport}\n"
                   "  enabled: true\n"
                   "  thresholds:\n"
                   f"    nack_percent: {o.get('nack_percent', 20)}\n"
                   "    nack_window: 5m\n"
                   f"    nack_min_messages: {o.get('nack_min_messages', 5)}\n"
                   "    queue_depth: 4096\n"
                   "    sink_failing: 10m\n")
        assert "metrics:\n  enabled: false\n" in text
        return text.replace("metrics:\n  enabled: false\n", metrics)

    @property
    def metrics_base(self):
        return f"http://127.0.0.1:{self.mport}"

    def get(self, path):
        """(status, content type, body text) of a GET."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.metrics_base + path, timeout=HTTP_TIMEOUT_S) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read().decode("utf-8")

    def status(self):
        code, ctype, body = self.get("/status")
        assert code == 200, (code, body)
        return json.loads(body)

    def wait_status(self, pred, what, timeout=GAUGE_WAIT_S):
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            st = self.status()
            if pred(st):
                return st
            time.sleep(0.1)
        self.tc.fail(f"/status never showed {what}: {json.dumps(st, indent=1)[:3000]}")


def connect_to(tc, port):
    from harness import MLLPConnection
    c = MLLPConnection(port)
    tc.addCleanup(c.close)
    return c


def send_mix(tc, d, tag=""):
    """Sends the known mix; returns nothing, asserts every ACK."""
    c1 = connect_to(tc, d.port)
    for i in (1, 2, 3):
        ack = c1.request(make_message(f"E{i}{tag}", send_app="EPIC", send_fac="HOSP"))
        tc.assertEqual(ack.code, "AA", ack.raw)
    ack = c1.request(make_message(f"E1{tag}", send_app="EPIC", send_fac="HOSP"))
    tc.assertEqual(ack.code, "AA", ack.raw)
    ack = c1.request(make_message(f"E4{tag}", send_app="EPIC", send_fac="HOSP", version="3.0"))
    tc.assertEqual((ack.code, ack.err_code), ("AR", "203"), ack.raw)
    ack = c1.request(make_message(f"E5{tag}", send_app="EPIC", send_fac="HOSP", msg_type="ZZZ^Z01"))
    tc.assertEqual((ack.code, ack.err_code), ("AE", "200"), ack.raw)

    c2 = connect_to(tc, d.port2)
    for i in (1, 2):
        ack = c2.request(make_message(f"L{i}{tag}", send_app="LAB", send_fac="WEST", msg_type="ADT^A04"))
        tc.assertEqual(ack.code, "AA", ack.raw)
    ack = c2.request(make_message(f"L1{tag}", send_app="LAB", send_fac="WEST", msg_type="ADT^A04"))
    tc.assertEqual(ack.code, "AA", ack.raw)
    ack = c2.request(make_message(f"L3{tag}", send_app="LAB", send_fac="WEST", msg_type=""))
    tc.assertEqual((ack.code, ack.err_code), ("AR", "101"), ack.raw)


# What the mix must produce.  (listener, sender, type) → figures.
SERIES = {
    ("it", "EPIC^HOSP", "ADT^A01"): {"received": 5, "duplicates": 1, "AA": 4, "AR": 1,
                                     "nacks": {"203": 1}},
    ("it", "EPIC^HOSP", "ZZZ^Z01"): {"received": 1, "duplicates": 0, "AE": 1, "nacks": {"200": 1}},
    ("it2", "LAB^WEST", "ADT^A04"): {"received": 3, "duplicates": 1, "AA": 3, "nacks": {}},
    ("it2", "LAB^WEST", "(none)"): {"received": 1, "duplicates": 0, "AR": 1, "nacks": {"101": 1}},
}
SENDERS = {
    "EPIC^HOSP": {"received": 6, "duplicates": 1, "AA": 4, "AE": 1, "AR": 1},
    "LAB^WEST": {"received": 4, "duplicates": 1, "AA": 3, "AE": 0, "AR": 1},
}
LISTENERS = {
    "it": SENDERS["EPIC^HOSP"],
    "it2": SENDERS["LAB^WEST"],
}
CODES = ("AA", "AE", "AR", "CA", "CE", "CR")


def parse_exposition(text):
    """{(name, frozenset(labels.items())): value} of every sample."""
    out = {}
    pat = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
    lab = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = pat.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = {}
        if m.group(2):
            for k, v in lab.findall(m.group(2)):
                labels[k] = re.sub(r'\\(.)', lambda x: {"n": "\n"}.get(x.group(1), x.group(1)), v)
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return out


def sample(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


class Metrics(unittest.TestCase):

    def setUp(self):
        self.daemon = MetricsDaemon(self)
        self.daemon.start()
        self.assertIn("event=metrics_listening", self.daemon.log())

    def mix_settled(self):
        send_mix(self, self.daemon)
        # Gauges (store figures) are sampled once a second.
        return self.daemon.wait_status(lambda s: s["store"]["messages"] == 5 and
                                       s["store"]["duplicates"] == 2, "the mix committed")

    def test_metrics_counters_and_format(self):
        self.mix_settled()
        code, ctype, text = self.daemon.get("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(ctype.startswith("text/plain; version=0.0.4"), ctype)
        s = parse_exposition(text)
        for (lst, snd, typ), want in SERIES.items():
            lbl = dict(listener=lst, sender=snd, type=typ)
            self.assertEqual(sample(s, "hl7bridge_messages_received_total", **lbl), want["received"], lbl)
            self.assertEqual(sample(s, "hl7bridge_duplicates_total", **lbl), want["duplicates"], lbl)
            for c in CODES:
                got = sample(s, "hl7bridge_acks_total", code=c, **lbl)
                self.assertEqual(got or 0, want.get(c, 0), (lbl, c))
            for reason, n in want["nacks"].items():
                self.assertEqual(sample(s, "hl7bridge_nacks_total", reason=reason, **lbl), n, lbl)
        # No other series: nothing was counted that the mix did not send.
        series = {k for k in s if k[0] == "hl7bridge_messages_received_total"}
        self.assertEqual(len(series), len(SERIES), series)
        nacks = sum(v for k, v in s.items() if k[0] == "hl7bridge_nacks_total")
        self.assertEqual(nacks, 3)
        # Latency: one observation per ACK, cumulative buckets.
        for lst, n in (("it", 6), ("it2", 4)):
            self.assertEqual(sample(s, "hl7bridge_ack_latency_seconds_count", listener=lst), n)
            self.assertEqual(sample(s, "hl7bridge_ack_latency_seconds_bucket", listener=lst, le="+Inf"), n)
            self.assertGreater(sample(s, "hl7bridge_ack_latency_seconds_sum", listener=lst), 0)
            buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in s.items()
                              if k[0] == "hl7bridge_ack_latency_seconds_bucket" and dict(k[1])["listener"] == lst),
                             key=lambda x: x[0])
            counts = [v for _, v in buckets]
            self.assertEqual(counts, sorted(counts), "buckets must be cumulative")
        # Transport and store figures.
        self.assertEqual(sample(s, "hl7bridge_connections_accepted_total"), 2)
        self.assertEqual(sample(s, "hl7bridge_frames_total"), 10)
        self.assertEqual(sample(s, "hl7bridge_store_messages_total"), 5)
        self.assertEqual(sample(s, "hl7bridge_store_duplicates_total"), 2)
        self.assertEqual(sample(s, "hl7bridge_store_failures_total"), 0)
        self.assertEqual(sample(s, "hl7bridge_store_queue_depth"), 0)
        self.assertGreater(sample(s, "hl7bridge_received_bytes_total"), 0)
        self.assertGreater(sample(s, "hl7bridge_sent_bytes_total"), 0)
        self.assertEqual(sample(s, "hl7bridge_ready"), 1)
        # No PHI: the message bodies carry DOE^JANE and an address.
        for phi in ("DOE", "JANE", "MAIN ST", "MRN123"):
            self.assertNotIn(phi, text)

        promtool = shutil.which("promtool")
        if promtool is None:
            self.skipTest("promtool not installed (Debian package prometheus): format check skipped")
        r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout.decode(errors="replace"))

    def test_status_json(self):
        st = self.mix_settled()
        self.assertTrue(st["ready"])
        tot = st["totals"]
        self.assertEqual(tot["received"], 10)
        self.assertEqual(tot["duplicates"], 2)
        self.assertEqual(tot["acks"], {"AA": 7, "AE": 1, "AR": 2, "CA": 0, "CE": 0, "CR": 0})
        self.assertEqual(tot["nacks"], {"101": 1, "200": 1, "203": 1})
        self.assertEqual(tot["nacks_total"], 3)
        listeners = {x["name"]: x for x in st["listeners"]}
        self.assertEqual(set(listeners), {"it", "it2"})
        for name, want in LISTENERS.items():
            got = listeners[name]
            self.assertEqual(got["received"], want["received"], name)
            self.assertEqual(got["duplicates"], want["duplicates"], name)
            for c in ("AA", "AE", "AR"):
                self.assertEqual(got["acks"][c], want[c], (name, c))
            self.assertEqual(got["latency"]["count"], want["AA"] + want["AE"] + want["AR"])
        senders = {x["sender"]: x for x in st["senders"]}
        self.assertEqual(set(senders), set(SENDERS))
        for name, want in SENDERS.items():
            for k in ("received", "duplicates"):
                self.assertEqual(senders[name][k], want[k], (name, k))
            for c in ("AA", "AE", "AR"):
                self.assertEqual(senders[name]["acks"][c], want[c], (name, c))
        self.assertEqual(senders["EPIC^HOSP"]["nacks"], {"200": 1, "203": 1})
        self.assertEqual(senders["LAB^WEST"]["nacks"], {"101": 1})
        types = {x["type"]: x["received"] for x in st["types"]}
        self.assertEqual(types, {"ADT^A01": 5, "ZZZ^Z01": 1, "ADT^A04": 3, "(none)": 1})
        series = {(x["listener"], x["sender"], x["type"]): x for x in st["series"]}
        self.assertEqual(set(series), set(SERIES))
        store = st["store"]
        self.assertEqual((store["messages"], store["duplicates"], store["failures"]), (5, 2, 0))
        self.assertEqual(store["queue_depth"], 0)
        self.assertTrue(store["writable"])
        self.assertEqual(st["connections"]["accepted"], 2)
        self.assertEqual(st["frames"]["received"], 10)
        sinks = {k["name"]: k for k in st["sinks"]}
        self.assertEqual(set(sinks), {"audit", "sms"})
        self.assertEqual(sinks["audit"]["type"], "file")
        self.assertEqual(sinks["sms"]["type"], "file")
        self.assertIn(sinks["sms"]["state"], ("idle", "pending"))
        self.assertEqual(sinks["sms"]["failing_since_ms"], 0)
        self.assertIn(sinks["audit"]["state"], ("idle", "pending", "uploading"))
        self.assertEqual(sinks["audit"]["failing_since_ms"], 0)
        self.assertNotIn("DOE", json.dumps(st))

    def test_degraded_on_nack_rate_shown_everywhere(self):
        # 3 NACKs of 10 ACKs is 30%, above the 20% threshold (min 5 messages).
        send_mix(self, self.daemon)
        st = self.daemon.wait_status(lambda s: s["degraded"], "degraded")
        self.assertEqual(st["degraded_reasons"], ["nack_rate"])
        self.assertEqual((st["nack_window"]["acks"], st["nack_window"]["nacks"]), (10, 3))
        # A NACK storm is the senders' problem, not a reason to take the
        # node out of a load balancer: ready, but saying degraded.
        code, _, body = self.daemon.get("/readyz")
        self.assertEqual((code, body), (200, "ready nack_rate\n"))
        code, _, text = self.daemon.get("/metrics")
        s = parse_exposition(text)
        self.assertEqual(sample(s, "hl7bridge_degraded"), 1)
        self.assertEqual(sample(s, "hl7bridge_degraded_condition", condition="nack_rate"), 1)
        self.assertEqual(sample(s, "hl7bridge_degraded_condition", condition="queue_depth"), 0)
        self.assertRegex(self.daemon.log(), r"level=warn event=degraded conditions=nack_rate ")
        code, _, page = self.daemon.get("/")
        self.assertIn("Degraded: nack_rate", page)

    def test_healthz_readyz_and_errors(self):
        self.assertEqual(self.daemon.get("/healthz")[::2], (200, "ok\n"))
        self.assertEqual(self.daemon.get("/readyz")[::2], (200, "ready\n"))
        self.assertEqual(self.daemon.get("/nope")[0], 404)
        req = urllib.request.Request(self.daemon.metrics_base + "/metrics", data=b"x", method="POST")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with self.assertRaises(urllib.error.HTTPError) as cm:
            opener.open(req, timeout=HTTP_TIMEOUT_S)
        self.assertEqual(cm.exception.code, 405)
        code, ctype, page = self.daemon.get("/")
        self.assertEqual(code, 200)
        self.assertTrue(ctype.startswith("text/html"), ctype)
        self.assertIn("<table id=\"senders\">", page)
        self.assertNotIn("<script", page)
        self.assertNotIn("http://", page.replace(self.daemon.metrics_base, ""))  # no external assets

    def run_stats(self, *extra):
        r = subprocess.run([str(require_binary(self)), "stats", "-c", str(self.daemon.config_path), *extra],
                           cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    @staticmethod
    def table_rows(text, first_col):
        """{name: [numbers...]} of the table whose header starts with first_col."""
        rows, inside = {}, False
        for line in text.splitlines():
            if line.startswith(first_col + " "):
                inside = True
                continue
            if inside:
                if not line.strip():
                    break
                parts = line.split()
                rows[parts[0]] = parts[1:]
        return rows

    def test_stats_command_running_and_daily_after_restart(self):
        self.mix_settled()
        out = self.run_stats()
        self.assertIn("ready", out.splitlines()[0])
        self.assertRegex(out, r"store: queue 0, .*messages 5, duplicates 2, failures 0")
        for title, names in (("LISTENER", LISTENERS), ("SENDER", SENDERS)):
            rows = self.table_rows(out, title)
            self.assertEqual(set(rows), set(names), out)
            for name, want in names.items():
                # RECEIVED AA AE AR CA CE CR DUP NACK%
                got = rows[name]
                self.assertEqual([int(x) for x in got[:8]],
                                 [want["received"], want["AA"], want["AE"], want["AR"], 0, 0, 0,
                                  want["duplicates"]], (title, name, out))
        self.assertEqual(self.table_rows(out, "SENDER")["EPIC^HOSP"][8], "33.3%")
        types = self.table_rows(out, "TYPE")
        self.assertEqual({k: int(v[0]) for k, v in types.items()},
                         {"ADT^A01": 5, "ZZZ^Z01": 1, "ADT^A04": 3, "(none)": 1})

        # Stopped: the daily totals come from the store (on PostgreSQL
        # through --daily: a stopped node's retention is read from SQLite)...
        self.daemon.assert_stops_cleanly()
        if self.daemon.pg:
            out = self.run_stats("--daily")
        else:
            out = self.run_stats()
            self.assertIn("no daemon answers", out)
        daily = self.daily_rows(out)
        self.assertEqual(daily[("it", "EPIC^HOSP")], [6, 4, 1, 1, 0, 0, 0, 1])
        self.assertEqual(daily[("it2", "LAB^WEST")], [4, 3, 0, 1, 0, 0, 0, 1])
        # ... and survive a restart: a second run adds to them.
        self.daemon.start()
        send_mix(self, self.daemon, tag="b")
        self.daemon.assert_stops_cleanly()
        daily = self.daily_rows(self.run_stats("--daily"))
        self.assertEqual(daily[("it", "EPIC^HOSP")], [12, 8, 2, 2, 0, 0, 0, 2])
        self.assertEqual(daily[("it2", "LAB^WEST")], [8, 6, 0, 2, 0, 0, 0, 2])
        rows = self.daemon.query("SELECT listener, sender, received, aa, ae, ar, duplicates"
                                 " FROM daily_totals ORDER BY listener, sender")
        self.assertEqual([tuple(x.decode() if isinstance(x, bytes) else str(x) for x in r)
                          for r in rows],
                         [("it", "EPIC^HOSP", "12", "8", "2", "2", "2"),
                          ("it2", "LAB^WEST", "8", "6", "0", "2", "2")])

    @staticmethod
    def daily_rows(text):
        """{(listener, sender): [received, AA..CR, dup]} of the daily table."""
        rows, inside = {}, False
        for line in text.splitlines():
            if line.startswith("DAY "):
                inside = True
                continue
            if inside and line.strip():
                parts = line.split()
                if re.match(r"\d{4}-\d\d-\d\d$", parts[0]):
                    parts = parts[1:]
                rows[(parts[0], parts[1])] = [int(x) for x in parts[2:10]]
        return rows


class MetricsStartup(unittest.TestCase):

    def test_bind_failure_is_a_clear_startup_error(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            d = MetricsDaemon(self)
            d.mport = taken.getsockname()[1]
            path = d.dir / "bind.yaml"
            path.write_text(d.config_text(free_port()))
            r = subprocess.run([str(d.bin), "run", "-c", str(path)], cwd=str(ROOT),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=60, text=True)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"level=error event=metrics_failed address=127\.0\.0\.1:\d+ "
                                   r"error=\"cannot listen on 127\.0\.0\.1 port \d+: Address already in use\"")
        self.assertNotIn("event=started", r.stderr)

    def test_disabled_metrics_serve_nothing(self):
        d = Daemon(self)   # the harness configures metrics.enabled: false
        d.start()
        self.assertNotIn("metrics_listening", d.log())
        d.assert_stops_cleanly()


class MetricsOnPostgreSQL(OnPostgreSQL, Metrics):
    """The store's figures on store.type postgresql: counters, /status,
    stats and the daily totals across a restart."""
    SQLITE_ONLY = {
        "test_degraded_on_nack_rate_shown_everywhere": "ACK rates, no store figure: run once",
        "test_healthz_readyz_and_errors": "the endpoint itself, no store figure: run once"
                                          " (/readyz on PostgreSQL: test_postgresql)",
    }


if __name__ == "__main__":
    unittest.main()
