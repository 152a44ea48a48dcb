"""Retention: every kind of record that holds patient data is purged by the
store's housekeeping once its configured time is up, and not before.

The clock is the test's: the daemon is restarted under libfaketime
(Debian's `libfaketime`, LD_PRELOAD, FAKETIME="+Nd"; the monotonic clock
and file times stay real), so "eight days later" takes a restart and one
housekeeping step (it first runs seconds after start), not eight days.
Nothing in the binary knows about it.

Per kind, with store.retention {raw: 1d, delivered: 7d, quarantined: 30d,
sms: 10d, sms_file: 5d, audit_files: 3d, upload_blocks: 3d}:
  +0   an `hl7bridge upload` whose block cannot be written (retries
       exhausted): the block is kept with its rows for `redrive`;
  +2d  raw bodies of delivered messages gone; messages, rows, audit files,
       quarantined message, SMS state, the SMS file (rotated) and the kept
       upload block kept; `stats` on the stopped daemon reads the same
       retention from the store;
  +4d  audit files (the file sink's upload blocks too) and the kept upload
       block gone; the rest as before;
  +8d  delivered messages and their connector rows gone, the rotated SMS
       file gone; quarantined message and SMS state kept;
  +31d everything gone.
/status and `hl7bridge stats` show the oldest record per kind."""

import hashlib
import json
import os
import subprocess
import time
import unittest
import urllib.request
from pathlib import Path

from harness import ROOT, Daemon, free_port, make_message, require_binary

FAKETIME_LIBS = [Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
                 Path("/usr/lib/faketime/libfaketimeMT.so.1")]
FIXTURE = (ROOT / "tests" / "fixtures" / "sms" / "siu.hl7.tmpl").read_text()
WAIT_S = 30  # hang guard for one housekeeping step after a start


def faketime_lib():
    for p in FAKETIME_LIBS:
        if p.exists():
            return p
    return None


def wait_for(pred, timeout=WAIT_S, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def hl7_time(t):
    return time.strftime("%Y%m%d%H%M%S+0000", time.gmtime(t))


def siu(ctrl, start):
    return FIXTURE.format(trigger="S12", appt="R1", start=hl7_time(start),
                          evn=hl7_time(time.time()), phone="^PRN^CP^^1^847^5550122",
                          consent="Y", room="Exam 3", duration=30, facility="CONTOSO",
                          first="ANA", ctrl=ctrl, address="1 MAIN ST^^EVANSTON^IL^60201^USA",
                          language="").encode("utf-8")


class RetentionDaemon(Daemon):
    def __init__(self, testcase):
        super().__init__(testcase)
        self.mport = free_port()

    def config_text(self, port):
        text = super().config_text(port)
        text = text.replace("  retention_days: 7\n",
                            "  retention_days: 7\n"
                            "  retention: {raw: 1d, delivered: 7d, quarantined: 30d, rejected: 30d,"
                            " sms: 10d, sms_file: 5d, audit_files: 3d, upload_blocks: 3d}\n")
        text = text.replace("    type: file\n    directory:",
                            "    type: file\n    batch: {max_age_s: 1}\n    directory:", 1)
        return text.replace("metrics:\n  enabled: false\n",
                            f"metrics:\n  enabled: true\n  address: 127.0.0.1:{self.mport}\n")

    def status(self):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.mport}/status", timeout=10) as r:
            return json.loads(r.read().decode("utf-8"))

    def retention(self):
        """{kind: entry} once a housekeeping step has run, else None."""
        try:
            r = self.status()["retention"]
        except OSError:
            return None
        if not r["checked_ms"]:
            return None
        return {k["kind"]: k for k in r["kinds"]}

    @staticmethod
    def faketime_env(days):
        return {"LD_PRELOAD": str(faketime_lib()), "FAKETIME": f"+{days}d",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1", "NO_FAKE_STAT": "1"}

    def restart_at(self, days):
        self.stop()
        self.env = self.faketime_env(days)
        self.start()
        rt = wait_for(self.retention)
        self.tc.assertIsNotNone(rt, f"no housekeeping step after start\n{self.log()}")
        return rt


class RetentionTest(unittest.TestCase):
    def setUp(self):
        require_binary(self)
        if faketime_lib() is None:
            self.skipTest("libfaketime is not installed (scripts/deps.sh test installs it)")

    def count(self, d, sql):
        return d.query(sql)[0][0]

    def test_every_phi_kind_purged_on_its_own_schedule(self):
        d = RetentionDaemon(self)
        d.start()
        c = d.connect()
        for i in range(3):
            self.assertEqual(c.request(make_message(f"RT-ADT-{i}")).code, "AA")
        quarantined = make_message("RT-QUAR").replace(b"DOE^JANE", b"")
        self.assertEqual(c.request(quarantined).code, "AA")
        self.assertEqual(c.request(siu("RT-SIU-1", time.time() + 3600)).code, "AA")

        out = d.dir / "out"
        sms = d.dir / "sms.jsonl"
        self.assertTrue(wait_for(lambda: self.count(
            d, "SELECT COUNT(*) FROM message_delivery WHERE delivered_ms IS NOT NULL") == 4),
            d.log())
        self.assertTrue(wait_for(lambda: sms.exists() and sms.stat().st_size > 0), d.log())
        self.assertEqual(self.count(d, "SELECT COUNT(*) FROM messages WHERE quarantined = 1"), 1)
        self.assertGreater(self.count(d, "SELECT COUNT(*) FROM rows"), 0)
        self.assertGreater(self.count(d, "SELECT COUNT(*) FROM sms_appointments"), 0)
        self.assertGreater(len(list(out.glob("hl7bridge-audit-*"))), 0)
        # Phone numbers in the SMS file are masked by default.
        line = json.loads(sms.read_text().splitlines()[0])
        self.assertEqual(line["to"], "+*******0122")
        self.assertNotIn("8475550122", sms.read_text())

        # An uploaded file whose only block cannot be written (a directory
        # stands where the file sink writes it): kept for redrive.
        msg = d.dir / "up.hl7"
        msg.write_bytes(make_message("RT-UP-1"))
        m = subprocess.run([str(d.bin), "map", "-c", str(d.config_path), str(msg)],
                           capture_output=True, timeout=30)
        self.assertEqual(m.returncode, 0, m.stderr)
        export = d.dir / "export.txt"
        export.write_bytes(m.stdout)
        digest = hashlib.sha256(m.stdout).hexdigest()
        (out / f".hl7bridge-upload-{digest[:16]}-00001.txt.tmp").mkdir(parents=True)
        up = subprocess.run([str(d.bin), "upload", "-c", str(d.config_path), str(export)],
                            capture_output=True, text=True, timeout=60)
        self.assertEqual(up.returncode, 1, up.stdout + up.stderr)
        self.assertRegex(up.stderr, r"block 1/1 kept for redrive as upload:\d+")
        self.assertEqual(self.count(d, "SELECT COUNT(*) FROM upload_kept"), 1)
        # One that is written: the file sink's upload blocks age as audit files.
        msg.write_bytes(make_message("RT-UP-2") + make_message("RT-UP-3"))  # two rows
        m = subprocess.run([str(d.bin), "map", "-c", str(d.config_path), str(msg)],
                           capture_output=True, timeout=30)
        export.write_bytes(m.stdout)
        up = subprocess.run([str(d.bin), "upload", "-c", str(d.config_path), str(export)],
                            capture_output=True, text=True, timeout=60)
        self.assertEqual(up.returncode, 0, up.stdout + up.stderr)
        self.assertEqual(len(list(out.glob("hl7bridge-upload-*"))), 1)

        def rotated():
            return sorted(p for p in d.dir.iterdir() if p.name.startswith("sms.jsonl."))

        # +2 days: only raw bodies of delivered messages are past their time.
        rt = d.restart_at(2)
        self.assertTrue(wait_for(lambda: self.count(
            d, "SELECT COUNT(*) FROM messages WHERE raw IS NOT NULL AND quarantined = 0") == 0),
            d.log())
        self.assertEqual(self.count(d, "SELECT COUNT(*) FROM messages"), 5)
        self.assertGreater(self.count(d, "SELECT COUNT(*) FROM rows"), 0)
        self.assertEqual(self.count(
            d, "SELECT COUNT(*) FROM messages WHERE quarantined = 1 AND raw IS NOT NULL"), 1)
        self.assertGreater(len(list(out.glob("hl7bridge-audit-*"))), 0)
        self.assertEqual(len(list(out.glob("hl7bridge-upload-*"))), 1)
        self.assertGreater(self.count(d, "SELECT COUNT(*) FROM sms_appointments"), 0)
        self.assertEqual(len(rotated()), 1, "the SMS file is rotated, not yet purged")
        self.assertEqual(rt["raw"]["keep_s"], 86400)
        self.assertEqual(rt["delivered"]["keep_s"], 7 * 86400)
        for kind in ("delivered", "rows", "quarantined", "sms", "sms_file", "audit_files",
                     "upload_blocks"):
            self.assertGreater(rt[kind]["oldest_ms"], 0, kind)
            self.assertGreaterEqual(rt[kind]["oldest_age_s"], 2 * 86400 - 600, kind)
        r = subprocess.run([str(require_binary(self)), "stats", "-c", str(d.config_path)],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"RETENTION\s+KEEP\s+OLDEST\s+PURGED")
        self.assertRegex(r.stdout, r"\nquarantined\s+30d00h\s+2d00h\s+0\n")
        self.assertRegex(r.stdout, r"\nraw\s+1d00h\s+none\s+\d+\n")
        self.assertRegex(r.stdout, r"\nupload_blocks\s+3d00h\s+2d00h\s+0\n")
        self.assertGreaterEqual(rt["upload_blocks"]["oldest_age_s"], 2 * 86400 - 600)
        self.assertEqual(self.count(d, "SELECT COUNT(*) FROM upload_kept"), 1)
        # The daemon stopped: `stats` reads the retention from the store.
        self.assertEqual(d.stop(), 0, d.log())
        r = subprocess.run([str(d.bin), "stats", "-c", str(d.config_path)],
                           capture_output=True, text=True, timeout=30,
                           env={**os.environ, **d.faketime_env(2)})
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("no daemon answers on", r.stdout)
        self.assertRegex(r.stdout, r"RETENTION\s+KEEP\s+OLDEST\s+PURGED")
        self.assertRegex(r.stdout, r"\nquarantined\s+30d00h\s+2d00h\s+-\n")
        self.assertRegex(r.stdout, r"\nraw\s+1d00h\s+none\s+-\n")
        self.assertRegex(r.stdout, r"\nrows\s+7d00h\s+2d00h\s+-\n")
        self.assertRegex(r.stdout, r"\nupload_blocks\s+3d00h\s+2d00h\s+-\n")
        self.assertRegex(r.stdout, r"\naudit_files\s+3d00h\s+2d00h\s+-\n")

        # +4 days: the audit file sink's output and the kept upload block
        # are past their 3 days.
        d.restart_at(4)
        self.assertTrue(wait_for(lambda: not list(out.glob("hl7bridge-audit-*"))), d.log())
        self.assertTrue(wait_for(lambda: not list(out.glob("hl7bridge-upload-*"))), d.log())
        self.assertTrue(wait_for(lambda: self.count(d, "SELECT COUNT(*) FROM upload_kept") == 0),
                        d.log())
        r = subprocess.run([str(d.bin), "redrive", "-c", str(d.config_path), "--list"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("no failed block", r.stdout)
        self.assertEqual(self.count(d, "SELECT COUNT(*) FROM messages"), 5)
        self.assertEqual(len(rotated()), 1)

        # +8 days: delivered messages and their rows, and the rotated SMS file.
        rt = d.restart_at(8)
        self.assertTrue(wait_for(lambda: self.count(
            d, "SELECT COUNT(*) FROM messages WHERE quarantined = 0") == 0), d.log())
        self.assertTrue(wait_for(lambda: self.count(d, "SELECT COUNT(*) FROM rows") == 0), d.log())
        self.assertTrue(wait_for(lambda: not rotated()), d.log())
        self.assertEqual(self.count(d, "SELECT COUNT(*) FROM messages WHERE quarantined = 1"), 1)
        self.assertGreater(self.count(d, "SELECT COUNT(*) FROM sms_appointments"), 0)

        # +31 days: nothing of it is left.
        d.restart_at(31)
        self.assertTrue(wait_for(lambda: self.count(d, "SELECT COUNT(*) FROM messages") == 0),
                        d.log())
        self.assertTrue(wait_for(lambda: self.count(
            d, "SELECT (SELECT COUNT(*) FROM sms_appointments)"
               " + (SELECT COUNT(*) FROM sms_outbox)") == 0), d.log())
        rt = wait_for(lambda: (lambda r: r if r and r["quarantined"]["oldest_ms"] == 0 else None)(
            d.retention()))
        self.assertIsNotNone(rt)
        for kind in ("raw", "delivered", "rows", "quarantined", "sms", "audit_files",
                     "upload_blocks"):
            self.assertEqual(rt[kind]["oldest_ms"], 0, kind)
        self.assertGreater(rt["quarantined"]["purged"], 0)
        self.assertIn("event=store_retention", d.log())
        d.assert_stops_cleanly()


if __name__ == "__main__":
    unittest.main()
