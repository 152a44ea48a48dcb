"""The status page as a person sees it: headless Chromium (Debian package
`chromium`) loads / from a running daemon after the known mix of
test_metrics.py; the test reads the rendered DOM for the sender and listener
rows and their counts, and keeps a screenshot (and the DOM) under
build/artifacts/.  Skipped, saying so, when Chromium is not installed."""

import html.parser
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from harness import ROOT
from test_metrics import MetricsDaemon, send_mix

ARTIFACTS = ROOT / "build" / "artifacts"
CHROMIUM_TIMEOUT_S = 120


def chromium_path():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


class Tables(html.parser.HTMLParser):
    """Collects every <table id=…> as a list of rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables, self.current, self.row, self.cell = {}, None, None, None
        self.ids = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids[a["id"]] = tag
        if tag == "table":
            self.current = self.tables.setdefault(a.get("id", f"t{len(self.tables)}"), [])
        elif tag == "tr" and self.current is not None:
            self.row = []
            self.current.append(self.row)
        elif tag in ("td", "th") and self.row is not None:
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        elif tag == "table":
            self.current = self.row = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


class StatusPage(unittest.TestCase):

    def setUp(self):
        self.chromium = chromium_path()
        if self.chromium is None:
            self.skipTest("chromium not installed (Debian package chromium): browser test skipped")
        self.daemon = MetricsDaemon(self)
        self.daemon.start()
        self.profile = tempfile.mkdtemp(prefix="hl7bridge-chromium-")
        self.addCleanup(shutil.rmtree, self.profile, True)

    def chromium_run(self, *args):
        argv = [self.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
                *args, self.daemon.metrics_base + "/"]
        env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=CHROMIUM_TIMEOUT_S, env=env)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace")[-2000:])
        return r.stdout.decode("utf-8", errors="replace")

    def test_sender_and_listener_rows_as_rendered(self):
        send_mix(self, self.daemon)
        self.daemon.wait_status(lambda s: s["store"]["messages"] == 5 and s["degraded"],
                                "the mix committed and the health evaluated")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        dom = self.chromium_run("--dump-dom")
        (ARTIFACTS / "status-page.html").write_text(dom)
        shot = ARTIFACTS / "status-page.png"
        if shot.exists():
            shot.unlink()
        self.chromium_run(f"--screenshot={shot}", "--window-size=1200,900", "--hide-scrollbars")
        self.assertTrue(shot.is_file() and shot.stat().st_size > 5000, "no screenshot written")
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

        p = Tables()
        p.feed(dom)
        head = ["Received", "AA", "AE", "AR", "CA", "CE", "CR", "Duplicates", "NACK rate"]
        senders = p.tables.get("senders")
        self.assertIsNotNone(senders, f"no senders table in the page: {dom[:2000]}")
        self.assertEqual(senders[0], ["Sender"] + head)
        rows = {r[0]: r[1:] for r in senders[1:]}
        self.assertEqual(rows, {
            "EPIC^HOSP": ["6", "4", "1", "1", "0", "0", "0", "1", "33.3%"],
            "LAB^WEST": ["4", "3", "0", "1", "0", "0", "0", "1", "25.0%"],
        })
        listeners = {r[0]: r[1:10] for r in p.tables["listeners"][1:]}
        self.assertEqual(listeners, {
            "it": ["6", "4", "1", "1", "0", "0", "0", "1", "33.3%"],
            "it2": ["4", "3", "0", "1", "0", "0", "0", "1", "25.0%"],
        })
        queues = {r[0]: r[1] for r in p.tables["queues"][1:]}
        self.assertEqual(queues["Store queue depth"], "0")
        self.assertEqual(queues["Store writable"], "yes")
        self.assertIn("Degraded: nack_rate", dom)
        self.assertIn("sinks", p.ids)
        for phi in ("DOE", "JANE", "MRN123"):
            self.assertNotIn(phi, dom)

    def test_last_hour_charts_as_rendered(self):
        send_mix(self, self.daemon)
        self.daemon.wait_status(lambda s: s["store"]["messages"] == 5,
                                "the mix committed")
        dom = self.chromium_run("--dump-dom")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "status-page-charts.html").write_text(dom)
        p = Charts()
        p.feed(dom)
        # Three inline SVG charts per listener, drawn by the browser.
        for l in (0, 1):
            for kind in ("messages", "nacks", "p99"):
                self.assertIn(f"chart-{l}-{kind}", p.svgs, f"no chart-{l}-{kind}: {dom[:3000]}")
        # Bars: one per minute with messages; their tooltips add up to what
        # each listener received (the mix may straddle a minute).
        self.assertEqual(sum(p.values("chart-0-messages")), 6, p.titles["chart-0-messages"])
        self.assertEqual(sum(p.values("chart-1-messages")), 4, p.titles["chart-1-messages"])
        nack = p.values("chart-0-nacks")
        self.assertTrue(nack and all(0 <= v <= 100 for v in nack), nack)
        if len(nack) == 1:  # all of it in one minute: 2 NACKs of 6 ACKs
            self.assertAlmostEqual(nack[0], 33.3, places=1)
        self.assertTrue(p.values("chart-0-p99") and all(v > 0 for v in p.values("chart-0-p99")))
        # No script, nothing fetched from elsewhere.
        self.assertNotIn("<script", dom)
        self.assertEqual(set(re.findall(r'(?:src|href)="(https?:[^"]*)"', dom)), set())
        for phi in ("DOE", "JANE", "MRN123"):
            self.assertNotIn(phi, dom)


class Charts(html.parser.HTMLParser):
    """The <svg id=…> charts of the page and the tooltip titles of their
    bars and points ("HH:MM UTC: value")."""

    def __init__(self):
        super().__init__()
        self.svgs, self.titles = set(), {}
        self.current, self.in_mark, self.text = None, False, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg":
            self.current = a.get("id")
            self.svgs.add(self.current)
            self.titles.setdefault(self.current, [])
        elif tag in ("rect", "circle") and self.current:
            self.in_mark = True
        elif tag == "title" and self.in_mark:
            self.text = []

    def handle_endtag(self, tag):
        if tag == "title" and self.text is not None:
            self.titles[self.current].append("".join(self.text))
            self.text = None
        elif tag in ("rect", "circle"):
            self.in_mark = False
        elif tag == "svg":
            self.current = None

    def handle_data(self, data):
        if self.text is not None:
            self.text.append(data)

    def values(self, chart):
        out = []
        for t in self.titles.get(chart, []):
            m = re.fullmatch(r"\d\d:\d\d UTC: ([0-9.]+)(?:%| ms)?", t)
            assert m, t
            out.append(float(m.group(1)))
        return out


if __name__ == "__main__":
    unittest.main()
