"""The message browser against the running daemon: `hl7bridge messages`,
`show` (and `show --reveal`, whose access record must reach the audit
sink's output), `reprocess` through the daemon's control socket after a
rule fix, rejected messages kept with their reason, and no PHI in the
browser's output, the logs or the status page's /messages.

Patient data in these messages are marker names (MARKERLAST, MARKERFIRST,
MARKERMRN, MARKERSTREET) so a leak is a plain substring search.
"""

import json
import os
import re
import shutil
import signal
import stat
import time
import unittest
import urllib.request
from pathlib import Path

import harness
from harness import Daemon, OnPostgreSQL, ROOT, make_message

MARKERS = ("MARKERLAST", "MARKERFIRST", "MARKERMRN", "MARKERSTREET")
WAIT_S = 30


def patient_msg(control_id, last="MARKERLAST", street="MARKERSTREET", app="TESTAPP"):
    """An ADT^A01 with marker patient data; an empty `last` makes the shipped
    rules quarantine it (mandatory Patient Last Name)."""
    pid = (f"PID|1||MARKERMRN^^^HOSP^MR||{last}^MARKERFIRST||19800101|F|||"
           f"{street}^^SPRINGFIELD^IL^62701")
    segs = [f"MSH|^~\\&|{app}|TESTFAC|HL7BRIDGE|HL7BRIDGE|20260301120000||ADT^A01|"
            f"{control_id}|P|2.5", "EVN|A01|20260301120000|||HB01^CLERK^CARL", pid, "PV1|1|I"]
    return ("\r".join(segs) + "\r").encode("ascii")


class BrowserDaemon(Daemon):
    """A daemon with its own copy of the ADT rules (so a test can fix one),
    a file audit sink that seals blocks after a second, and metrics on."""

    def __init__(self, testcase, adt_policy="quarantine", **kw):
        super().__init__(testcase, **kw)
        self.rules = self.dir / "adt.yaml"
        text = (ROOT / "config/mappings/adt.yaml").read_text()
        self.rules.write_text(text.replace("on_missing_mandatory: quarantine",
                                           f"on_missing_mandatory: {adt_policy}"))
        self.out = self.dir / "out"
        self.metrics_port = harness.free_port()

    def config_text(self, port):
        text = super().config_text(port)
        text = text.replace(f"    directory: {harness._yaml_str(self.out)}\n",
                            f"    directory: {harness._yaml_str(self.out)}\n"
                            "    line_ending: lf\n"
                            "    batch: {max_age_s: 1}\n")
        text = text.replace("metrics:\n  enabled: false\n",
                            f"metrics:\n  enabled: true\n  address: 127.0.0.1:{self.metrics_port}\n")
        rules = ("  rules:\n"
                 f"    - {harness._yaml_str(self.rules)}\n"
                 f"    - {harness._yaml_str(ROOT / 'config/mappings/siu.yaml')}\n"
                 f"    - {harness._yaml_str(ROOT / 'config/mappings/access-audit.yaml')}")
        return text.replace("\nmapping:\n", "\nmapping:\n" + rules + "\n", 1)

    def fix_rules(self, policy="default"):
        text = self.rules.read_text()
        self.rules.write_text(re.sub(r"on_missing_mandatory: \w+",
                                     f"on_missing_mandatory: {policy}", text))

    def sink_lines(self):
        """Data lines of every file the audit sink wrote (headers dropped)."""
        lines = []
        if self.out.is_dir():
            for f in sorted(self.out.iterdir()):
                if f.name.startswith("."):
                    continue
                body = f.read_text().split("\n")
                lines.extend(l for l in body[1:] if l)
        return lines

    def wait_sink(self, pred, what):
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            lines = self.sink_lines()
            if pred(lines):
                return lines
            time.sleep(0.1)
        self.tc.fail(f"audit sink output never showed {what}: {self.sink_lines()}\n{self.log()[-3000:]}")


class BrowserTest(unittest.TestCase):
    def start(self, **kw):
        d = BrowserDaemon(self, **kw)
        d.start()
        return d

    def cli(self, d, *args, ok=True):
        p = harness.DaemonTestCase.run_cmd(self, [str(d.bin), *args, "-c", str(d.config_path)],
                                           cwd=str(d.dir))
        out, err = p.stdout.decode(), p.stderr.decode()
        if ok:
            self.assertEqual(p.returncode, 0, f"{args}: {out}\n{err}")
        return p.returncode, out, err

    def messages_json(self, d, *args):
        _, out, _ = self.cli(d, "messages", "--json", *args)
        return [json.loads(l) for l in out.splitlines() if l]

    def assertNoPHI(self, text, where):
        for m in MARKERS:
            self.assertNotIn(m, text, f"{m} in {where}:\n{text[-2000:]}")

    def send(self, d, *msgs):
        acks = []
        with d.connect() as c:
            for m in msgs:
                acks.append(c.request(m))
        return acks

    # ------------------------------------------------------------------

    def test_messages_lists_metadata_and_rejected_with_reason(self):
        d = self.start()
        acks = self.send(d, patient_msg("B-OK1"), patient_msg("B-Q1", last=""),
                         b"NOT HL7 AT ALL MARKERLAST\r",
                         patient_msg("B-V3").replace(b"|P|2.5", b"|P|3.0"),
                         patient_msg("B-OK1"), patient_msg("B-OTHER", app="OTHERAPP"))
        self.assertEqual([a.code for a in acks], ["AA", "AA", "AR", "AR", "AA", "AA"])

        rows = self.messages_json(d)
        by_cid = {}
        for r in rows:
            for k in ("id", "control_id", "sender", "type", "ack", "status", "received",
                      "listener", "peer", "reason", "rows", "delivered"):
                self.assertIn(k, r)
            by_cid.setdefault(r["control_id"], []).append(r)
        self.assertEqual(len(rows), 5)  # the duplicate is counted on its original
        ok = by_cid["B-OK1"][0]
        self.assertEqual((ok["sender"], ok["type"], ok["ack"], ok["duplicates"]),
                         ("TESTAPP^TESTFAC", "ADT^A01", "AA", 1))
        self.assertIn(ok["status"], ("accepted", "undelivered"))
        q = by_cid["B-Q1"][0]
        self.assertEqual(q["status"], "quarantined")
        self.assertIn("Patient Last Name", q["reason"])
        v3 = by_cid["B-V3"][0]
        self.assertEqual((v3["status"], v3["ack"], v3["err_code"]), ("rejected", "AR", 203))
        self.assertTrue(v3["id"].startswith("R"))
        self.assertEqual(v3["err_location"], "MSH^1^12")
        garbage = by_cid[None][0]
        self.assertEqual((garbage["status"], garbage["err_code"]), ("rejected", 100))

        # Filters.
        self.assertEqual({r["control_id"] for r in self.messages_json(d, "--status", "rejected")},
                         {"B-V3", None})
        self.assertEqual([r["control_id"] for r in self.messages_json(d, "--status", "quarantined")],
                         ["B-Q1"])
        self.assertEqual([r["control_id"] for r in self.messages_json(d, "--status", "duplicate")],
                         ["B-OK1"])
        self.assertEqual([r["control_id"] for r in self.messages_json(d, "--control-id", "B-V3")],
                         ["B-V3"])
        self.assertEqual([r["control_id"] for r in self.messages_json(d, "--sender", "OTHERAPP^TESTFAC")],
                         ["B-OTHER"])
        self.assertEqual(len(self.messages_json(d, "--type", "ADT^A01")), 4)
        self.assertEqual(self.messages_json(d, "--since", "2099-01-01"), [])
        self.assertEqual(len(self.messages_json(d, "--since", "1h", "--limit", "2")), 2)
        d.wait_sink(lambda l: len(l) >= 2, "the two accepted rows")
        self.assertEqual({r["control_id"] for r in self.messages_json(d, "--status", "accepted")},
                         {"B-OK1", "B-OTHER"})

        # The table, `show` without --reveal, the log: no patient data.
        _, table, _ = self.cli(d, "messages")
        self.assertIn("B-V3", table)
        self.assertRegex(table, r"R\d+ .* rejected .*ERR 203 MSH\^1\^12")
        self.assertNoPHI(table, "messages")
        self.assertNoPHI(json.dumps(rows), "messages --json")
        _, shown, _ = self.cli(d, "show", q["id"])
        self.assertIn("segments:    MSH EVN PID PV1", shown)
        self.assertNoPHI(shown, "show")
        _, shown, _ = self.cli(d, "show", garbage["id"])
        self.assertNoPHI(shown, "show of a rejected message")
        # The status page's search: metadata only.
        page = urllib.request.urlopen(
            f"http://127.0.0.1:{d.metrics_port}/messages?status=rejected", timeout=10).read().decode()
        self.assertIn("B-V3", page)
        self.assertNotIn("B-OK1", page)
        self.assertNoPHI(page, "/messages")
        page = urllib.request.urlopen(
            f"http://127.0.0.1:{d.metrics_port}/messages?control_id=B-Q1&format=json",
            timeout=10).read().decode()
        self.assertEqual([json.loads(l)["control_id"] for l in page.splitlines()], ["B-Q1"])
        self.assertNoPHI(page, "/messages json")
        d.assert_stops_cleanly()
        self.assertNoPHI(d.log(), "the daemon's log")

    def test_rejected_by_rules_then_corrected_resend_is_stored(self):
        """A message the rules reject (AE) is kept apart: never a claim, never
        in the sink, and the corrected re-send with the same control id is a
        new message, not a duplicate."""
        d = self.start(adt_policy="reject")
        a = self.send(d, patient_msg("B-FIX", last=""))[0]
        self.assertEqual((a.code, a.err_code), ("AE", "101"))
        b = self.send(d, patient_msg("B-FIX", last=""))[0]  # the same again: judged again
        self.assertEqual(b.code, "AE")
        c = self.send(d, patient_msg("B-FIX"))[0]
        self.assertEqual((c.code, c.text), ("AA", "Message accepted"))
        rej = self.messages_json(d, "--status", "rejected")
        self.assertEqual(len(rej), 2)
        for r in rej:
            self.assertEqual((r["control_id"], r["ack"], r["err_code"]), ("B-FIX", "AE", 101))
            self.assertIn("Patient Last Name", r["reason"])
        self.assertEqual(d.count_control_id("B-FIX"), 1)
        lines = d.wait_sink(lambda l: len(l) >= 1, "the corrected message's row")
        time.sleep(1.5)  # a rejected message's row would have come with it
        self.assertEqual(len(d.sink_lines()), 1, lines)
        # Reprocess of the rejected one is refused: the re-send carries the rows.
        if d.store_type == "sqlite":
            _, out, _ = self.cli(d, "reprocess", "--status", "rejected")
            self.assertIn("already queued: 2", out)
        else:  # not on PostgreSQL yet, and it says so
            rc, _, err = self.cli(d, "reprocess", "--status", "rejected", ok=False)
            self.assertEqual(rc, 1)
            self.assertIn("not available with store.type postgresql", err)
        d.assert_stops_cleanly()

    def test_reveal_writes_an_access_row_to_the_audit_feed(self):
        d = self.start()
        self.assertEqual(self.send(d, patient_msg("B-REV"))[0].code, "AA")
        d.wait_sink(lambda l: len(l) == 1, "the message's row")
        mid = self.messages_json(d, "--control-id", "B-REV")[0]["id"]
        rc, _, err = self.cli(d, "show", mid, "--reveal", ok=False)
        self.assertEqual(rc, 2)
        self.assertIn("--reason", err)
        _, out, err = self.cli(d, "show", mid, "--reveal", "--reason", "ticket 4711 check",
                               "--user", "auditor.one@example.org")
        self.assertIn("PID|1||MARKERMRN^^^HOSP^MR||MARKERLAST^MARKERFIRST", out)
        self.assertIn("recorded as journal entry", err)
        lines = d.wait_sink(lambda l: len(l) == 2, "the access row")
        access = [l for l in lines if "viewed through hl7bridge" in l]
        self.assertEqual(len(access), 1, lines)
        cols = access[0].split("\t")
        header = (d.out / sorted(p.name for p in d.out.iterdir())[-1]).read_text().split("\n")[0]
        row = dict(zip(header.split("\t"), cols))
        self.assertEqual(row["Event Name"], "Stored HL7 message viewed through hl7bridge")
        self.assertEqual(row["Patient Reg Id"], "MARKERMRN")
        self.assertEqual(row["Restricted Access Comment"], "ticket 4711 check")
        self.assertEqual(row["Email Address (UPN) or SamAccountName"], "auditor.one@example.org")
        self.assertRegex(row["Creation Time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        # Written in the same row layout as the daemon's rows (one header).
        self.assertEqual(d.query("SELECT COUNT(DISTINCT layout), COUNT(*) - COUNT(layout)"
                                 " FROM rows"), [(1, 0)])
        # Without --user: the OS user.
        self.cli(d, "show", mid, "--reveal", "--reason", "second look")
        import pwd
        me = pwd.getpwuid(os.geteuid()).pw_name
        lines = d.wait_sink(lambda l: len(l) == 3, "the second access row")
        self.assertTrue(any(f"\t{me}\t" in l and "second look" in l for l in lines), lines)
        # The access entries are listed, without the reason text or PHI.
        rows = self.messages_json(d)
        made = [r for r in rows if r.get("made_by") == "reveal"]
        self.assertEqual([r["origin"] for r in made], [mid, mid])
        self.assertNoPHI(json.dumps(rows), "messages after a reveal")
        self.assertNotIn("4711", json.dumps(rows))
        d.assert_stops_cleanly()

    def test_reprocess_after_rule_fix_reaches_the_sink_once(self):
        d = self.start()
        self.assertEqual(self.send(d, patient_msg("B-RP", last=""), patient_msg("B-RP2"))[0].code, "AA")
        d.wait_sink(lambda l: len(l) == 1, "the good message's row")
        q = self.messages_json(d, "--status", "quarantined")
        self.assertEqual([r["control_id"] for r in q], ["B-RP"])
        qid = q[0]["id"]

        # The rule file is fixed but not reloaded: the daemon's rules still
        # quarantine it (reprocess uses the loaded rules).
        d.fix_rules("default")
        sock = d.dir / "hl7bridge.ctl"
        self.assertTrue(stat.S_ISSOCK(os.stat(sock).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(sock).st_mode), 0o600)
        _, out, _ = self.cli(d, "reprocess", "--status", "quarantined")
        self.assertIn("using the rules loaded by the running daemon", out)
        self.assertIn(f"{qid} quarantined: still quarantined", out)
        _, out, _ = self.cli(d, "reprocess", "--status", "quarantined", "--dry-run")
        self.assertIn("still quarantined: 1", out)

        os.kill(d.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + WAIT_S
        while "event=reload " not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        _, out, _ = self.cli(d, "reprocess", "--status", "quarantined", "--dry-run")
        self.assertIn(f"{qid} quarantined: would queue 1 row (dry run)", out)
        _, out, _ = self.cli(d, "reprocess", "--status", "quarantined")
        self.assertRegex(out, rf"{qid} quarantined: queued 1 row as \d+")
        self.assertIn("queued: 1", out)
        self.assertIn("  quarantined: 1 queued\n", out)
        lines = d.wait_sink(lambda l: len(l) == 2, "the reprocessed row")
        self.assertEqual(sum("MARKERFIRST" in l and "Unknown" in l for l in lines), 1, lines)

        # Twice: nothing more.
        _, out, _ = self.cli(d, "reprocess", "--status", "quarantined")
        self.assertIn("already queued: 1", out)
        _, out, _ = self.cli(d, "reprocess", "--id", qid)
        self.assertIn("already queued: 1", out)
        time.sleep(1.5)
        self.assertEqual(len(d.sink_lines()), 2)
        q = self.messages_json(d, "--control-id", "B-RP")[0]
        self.assertEqual(q["status"], "quarantined")
        self.assertTrue(q["reprocessed_as"])

        # --redeliver: once more, and only then.
        _, out, _ = self.cli(d, "reprocess", "--id", qid, "--redeliver")
        self.assertIn("queued: 1", out)
        lines = d.wait_sink(lambda l: len(l) == 3, "the redelivered row")
        self.assertEqual(d.query("SELECT COUNT(DISTINCT layout), COUNT(*) - COUNT(layout)"
                                 " FROM rows"), [(1, 0)])
        self.assertEqual(sum("Unknown" in l for l in lines), 2, lines)
        self.assertNoPHI(out, "reprocess output")

        # Without the daemon: the rules of the configuration.
        d.assert_stops_cleanly()
        self.assertFalse(sock.exists(), "control socket left behind")
        rc, out, _ = self.cli(d, "reprocess", "--status", "quarantined")
        self.assertIn("no daemon answers", out)
        self.assertIn("already queued: 1", out)
        self.assertIn("  quarantined: 1 already queued\n", out)
        self.assertNoPHI(d.log(), "the daemon's log")

    def test_reprocess_follows_a_reloaded_row_format(self):
        """A reload may change the rules and the row format together: the
        daemon reprocesses with both, so the rows fit the header they go
        out under."""
        d = self.start()
        self.assertEqual(self.send(d, patient_msg("B-FMT", last=""))[0].code, "AA")
        d.fix_rules("default")
        text = d.config_path.read_text()
        d.config_path.write_text(text.replace("    line_ending: lf\n",
                                              "    line_ending: lf\n    format: csv\n"))
        os.kill(d.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + WAIT_S
        while "event=reload " not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("event=reload ", d.log())
        _, out, _ = self.cli(d, "reprocess", "--status", "quarantined")
        self.assertIn("queued: 1", out)
        d.wait_sink(lambda l: len(l) == 1, "the reprocessed row")
        files = [f for f in d.out.iterdir() if not f.name.startswith(".")]
        self.assertEqual(len(files), 1, files)
        self.assertTrue(files[0].name.endswith(".csv"), files)
        header, row = files[0].read_text().split("\n")[:2]
        self.assertIn("Patient Reg Id,", header)
        self.assertIn(",MARKERMRN,MARKERFIRST,", row)
        self.assertNotIn("\t", row)
        d.assert_stops_cleanly()

    def test_help(self):
        b = str(harness.require_binary(self))
        for cmd in ("messages", "show", "reprocess"):
            p = harness.DaemonTestCase.run_cmd(self, [b, cmd, "--help"])
            self.assertEqual(p.returncode, 0)
            self.assertIn(f"usage: hl7bridge {cmd}", p.stdout.decode())


class BrowserTestOnPostgreSQL(OnPostgreSQL, BrowserTest):
    """`messages`, `show`, /messages on store.type postgresql (every node's
    messages in one database); reveal and reprocess write journal entries,
    which do not run there yet (they say so)."""
    SQLITE_ONLY = {
        "test_reveal_writes_an_access_row_to_the_audit_feed":
            "show --reveal journals the access: not on PostgreSQL yet",
        "test_reprocess_after_rule_fix_reaches_the_sink_once":
            "reprocess does not run on PostgreSQL yet",
        "test_reprocess_follows_a_reloaded_row_format":
            "reprocess does not run on PostgreSQL yet",
    }


if __name__ == "__main__":
    unittest.main()
