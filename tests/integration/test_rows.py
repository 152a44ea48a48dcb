"""Rows that name a person, and what interface engines expect on the wire
(issue 11, sections 1 and 5), through the real binary:

- a lookup table resolves the EHR operator id to a UPN in the stored rows,
  and SIGHUP reloads a changed table;
- a row without a resolved user is dropped and counted by rule, in
  /metrics, /status and `hl7bridge stats`;
- over the shared corpus, no row of the shipped rules carries MSH-3 (the
  sending system) as its user, even when the users table would resolve it;
- TCP keep-alive is on for accepted MLLP connections (`ss -o`), and off
  when the listener says so;
- `hl7bridge map` maps an FHS/BHS batch member by member;
- `check` refuses the Epic schema with csv files;
- rejections and quarantines are logged with listener, sender, type,
  control id and reason, and no patient data.
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.request
from pathlib import Path

from harness import (ROOT, FIXTURES, Daemon, MLLPConnection, OnPostgreSQL, binary_path,
                     corpus_files, field, is_batch, make_message, segments, split_messages)
from test_metrics import MetricsDaemon

USER_COL = 18  # healthcare schema: "Email Address (UPN) or SamAccountName"


class HL7BridgeTestCase(unittest.TestCase):
    """A scratch directory per test and a runner for the CLI."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="hl7bridge-rows-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.bin = str(binary_path())
        if not os.access(self.bin, os.X_OK):
            self.skipTest(f"{self.bin} not built")

    def run_cmd(self, argv, timeout=60):
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, errors="replace",
                              timeout=timeout, cwd=str(ROOT))


def wait_for(pred, timeout=15, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def stored_rows(d):
    """The stored rows' cells, one list per row."""
    out = []
    for data in d.row_data():
        for line in data.decode().split("\n"):
            line = line.rstrip("\r")
            if line:
                out.append(line.split("\t"))
    return out


def user_message(cid, operator):
    return make_message(cid).replace(b"|||HB01^CLERK^CARL", b"|||" + operator.encode())


class LookupTables(HL7BridgeTestCase):
    def test_users_resolved_and_reloaded_on_sighup(self):
        users = Path(self.tmp) / "users.csv"
        users.write_text('ehr_id,name,upn\r\nHB01,"Clerk, Carl",carl@contoso.org\r\n')
        d = Daemon(self, users_csv=users)
        port = d.start()
        with MLLPConnection(port) as c:
            self.assertEqual(c.request(make_message("LK0001")).code, "AA")
        rows = wait_for(lambda: stored_rows(d))
        self.assertEqual([r[USER_COL] for r in rows], ["carl@contoso.org"])
        self.assertEqual(rows[0][20], "HB01")  # employee id stays the EHR id

        # the export changes: a reload takes the new table for new messages
        users.write_text("ehr_id,upn\nHB01,carl.new@contoso.org\n")
        os.kill(d.proc.pid, signal.SIGHUP)
        self.assertTrue(wait_for(lambda: "event=reload " in d.log()), d.log())
        with MLLPConnection(port) as c:
            self.assertEqual(c.request(make_message("LK0002")).code, "AA")
        rows = wait_for(lambda: len(stored_rows(d)) == 2 and stored_rows(d))
        self.assertEqual([r[USER_COL] for r in rows], ["carl@contoso.org", "carl.new@contoso.org"])

        # a broken table keeps the previous one and says where
        users.write_text("ehr_id,upn\nHB01,a@x\nHB01,b@x\n")
        os.kill(d.proc.pid, signal.SIGHUP)
        self.assertTrue(wait_for(lambda: "event=reload_failed" in d.log()), d.log())
        self.assertIn("users.csv:3: duplicate key 'HB01' (first on line 2)", d.log())
        with MLLPConnection(port) as c:
            self.assertEqual(c.request(make_message("LK0003")).code, "AA")
        rows = wait_for(lambda: len(stored_rows(d)) == 3 and stored_rows(d))
        self.assertEqual(rows[2][USER_COL], "carl.new@contoso.org")
        self.assertEqual(d.stop(), 0)

    def test_check_reports_table_problems(self):
        users = Path(self.tmp) / "users.csv"
        users.write_text("ehr_id,mail\nA,a@x\nA,b@x\n\"B,b@x\n")
        cfg = Path(self.tmp) / "c.yaml"
        cfg.write_text(f"mapping:\n  lookups:\n    users: {{file: {users}}}\n")
        r = self.run_cmd([self.bin, "check", "-c", str(cfg)])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f"{users}:1: no column 'upn' (value_column) in the header; it has: ehr_id, mail",
                      r.stderr)
        users.write_text("ehr_id,upn\nA,a@x\nA,b@x\n\"B,b@x\n")
        r = self.run_cmd([self.bin, "check", "-c", str(cfg)])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f"{users}:4: a quoted field is not closed", r.stderr)
        self.assertIn(f"{users}:3: duplicate key 'A' (first on line 2)", r.stderr)
        users.write_text("ehr_id,upn\nA,a@x\n")
        r = self.run_cmd([self.bin, "check", "-c", str(cfg)])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("lookup table users: 1 row", r.stdout)


class UnresolvedUsers(HL7BridgeTestCase):
    def test_filtered_and_counted_by_rule(self):
        d = MetricsDaemon(self)
        port = d.start()
        with MLLPConnection(port) as c:
            # known operator, unknown operator, no operator at all
            self.assertEqual(c.request(make_message("UR0001")).code, "AA")
            self.assertEqual(c.request(user_message("UR0002", "NOBODY^NO^NAME")).code, "AA")
            self.assertEqual(c.request(user_message("UR0003", "")).code, "AA")
        self.assertEqual(d.count_control_id("UR0002"), 1)  # stored, acknowledged: no row
        # filtered, not kept aside: nothing waits in quarantine for an analyst
        self.assertEqual(int(d.query("SELECT COUNT(*) FROM messages WHERE quarantined != 0")[0][0]),
                         0)
        rows = wait_for(lambda: stored_rows(d))
        self.assertEqual([r[USER_COL] for r in rows], ["carl.clerk@contoso.org"])

        def metric():
            with urllib.request.urlopen(f"{d.metrics_base}/metrics", timeout=10) as r:
                text = r.read().decode()
            m = re.search(r'^hl7bridge_unresolved_user_rows_total\{rule="adt",action="filter"\} (\d+)$',
                          text, re.M)
            return m and int(m.group(1)) == 2 and text
        text = wait_for(metric)
        self.assertTrue(text, "hl7bridge_unresolved_user_rows_total for adt/filter never reached 2")
        self.assertRegex(text, r'(?m)^hl7bridge_unresolved_user_rows_total\{rule="adt",action="quarantine"\} 0$')
        r = self.run_cmd([self.bin, "stats", "-c", str(d.config_path)])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("rows without a resolved user: 2 (rule adt: 2 filtered, 0 quarantined, 0 kept)",
                      r.stdout)
        self.assertEqual(d.stop(), 0)


class UnresolvedUsersOnPostgreSQL(OnPostgreSQL, UnresolvedUsers):
    """The same on store.type postgresql."""


class NoSystemAsUser(HL7BridgeTestCase):
    """Every ADT/SIU/ZAU message of the corpus through `hl7bridge map` with the
    shipped rules and a users table that would resolve MSH-3 too: MSH-3 never
    becomes a row's user.  Counts what the corpus holds."""

    def test_no_msh3_user_in_any_shipped_rule_row(self):
        corpus, files = corpus_files(malformed=False)
        if corpus is None:
            self.skipTest("../shared/corpus absent: no corpus to sweep")
        msh3, users = set(), set()
        for p in files:
            data = p.read_bytes()
            for msg in split_messages(data):
                segs = segments(msg)
                if not segs:
                    continue
                for seg in segs:
                    if seg.startswith(b"MSH") and len(seg) > 8:
                        app = field(seg, 3).split(b"^")[0]
                        if app:
                            msh3.add(app.decode("latin-1"))
                    for tag, n in ((b"EVN", 5), (b"SCH", 20), (b"ZAU", 7)):
                        parts = seg.split(b"|")
                        if parts[0] == tag and len(parts) > n:
                            uid = parts[n].split(b"^")[0]
                            if uid:
                                users.add(uid.decode("latin-1"))
        if not files:
            self.skipTest("../shared/corpus holds no .hl7 file")
        table = Path(self.tmp) / "users.csv"
        lines = ["ehr_id,upn"]
        for k in sorted(msh3 | users):
            if "," in k or '"' in k or not k.strip():
                continue
            tag = "msh3" if k in msh3 else "user"
            lines.append(f"{k},{tag}-{abs(hash(k)) % 10**8}@contoso.org")
        table.write_text("\n".join(lines) + "\n")
        systems = {line.split(",")[1] for line in lines[1:] if line.split(",")[1].startswith("msh3-")}
        cfg = Path(self.tmp) / "c.yaml"
        cfg.write_text("mapping:\n  time_zone: America/Chicago\n  lookups:\n"
                       f"    users: {{file: {table}}}\n")
        rows, out_users = 0, {}
        for i in range(0, len(files), 50):
            r = self.run_cmd([self.bin, "map", "-c", str(cfg),
                              *map(str, files[i:i + 50])], timeout=120)
            self.assertIn(r.returncode, (0, 1), r.stderr)  # 1: some corpus messages are rejected
            for line in r.stdout.splitlines()[1:]:
                cells = line.split("\t")
                self.assertEqual(len(cells), 23, line)
                rows += 1
                out_users[cells[USER_COL]] = out_users.get(cells[USER_COL], 0) + 1
        print(f"\ncorpus: {len(files)} files, {len(msh3)} distinct MSH-3, {len(users)} distinct "
              f"user ids, {rows} rows, {len(out_users)} distinct row users")
        if users:
            self.assertGreater(rows, 0, "the corpus names users, yet no row was made")
        for u in out_users:
            self.assertNotIn(u, systems, f"a row names a sending system as its user: {u}")
            self.assertNotIn(u, msh3 - users, f"a row's user is an MSH-3 value: {u}")
            self.assertTrue(u, "a row without a user")


class KeepAlive(HL7BridgeTestCase):
    def accepted_timers(self, port):
        """`ss -o` lines of the daemon's accepted sockets on `port`."""
        r = subprocess.run(["ss", "-tno", "state", "established", f"( sport = :{port} )"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [l for l in r.stdout.splitlines() if f":{port} " in l]

    def test_keepalive_on_accepted_sockets(self):
        if shutil.which("ss") is None:
            self.skipTest("ss (iproute2) not installed")
        d = Daemon(self)
        d.config_text_orig = d.config_text
        d.config_text = lambda p: d.config_text_orig(p).replace(
            "    idle_timeout_s: 600\n",
            "    idle_timeout_s: 600\n    keepalive: {idle_s: 45, interval_s: 7, count: 3}\n", 1)
        port = d.start()
        with MLLPConnection(port) as c:
            self.assertEqual(c.request(make_message("KA0001")).code, "AA")
            lines = wait_for(lambda: self.accepted_timers(port))
            self.assertTrue(lines, "no accepted socket seen by ss")
            self.assertTrue(any("timer:(keepalive," in l for l in lines), lines)
            # the first probe is due within idle_s (45 s), not the kernel's 2 hours
            m = re.search(r"timer:\(keepalive,(?:(\d+)min)?(\d+)(?:\.\d+)?sec", " ".join(lines))
            self.assertTrue(m, lines)
            self.assertLessEqual(int(m.group(1) or 0) * 60 + int(m.group(2)), 45, lines)
        self.assertEqual(d.stop(), 0)

    def test_keepalive_can_be_turned_off(self):
        if shutil.which("ss") is None:
            self.skipTest("ss (iproute2) not installed")
        d = Daemon(self)
        d.config_text_orig = d.config_text
        d.config_text = lambda p: d.config_text_orig(p).replace(
            "    idle_timeout_s: 600\n", "    idle_timeout_s: 600\n    keepalive: {enabled: false}\n", 1)
        port = d.start()
        with MLLPConnection(port) as c:
            self.assertEqual(c.request(make_message("KA0002")).code, "AA")
            lines = wait_for(lambda: self.accepted_timers(port))
            self.assertTrue(lines, "no accepted socket seen by ss")
            self.assertFalse(any("keepalive" in l for l in lines), lines)
        self.assertEqual(d.stop(), 0)


class RefusalLogs(HL7BridgeTestCase):
    def test_rejections_and_quarantines_say_where_to_look(self):
        d = Daemon(self)
        port = d.start()
        no_address = make_message("LOGQ0001").replace(b"|||1 MAIN ST^^SPRINGFIELD^IL^62701", b"")
        no_type = make_message("LOGR0001").replace(b"|ADT^A01|", b"||")
        member = make_message("LOGB0002", msg_type="ADT^A04").replace(b"|||1 MAIN ST^^SPRINGFIELD^IL^62701", b"")
        batch = (b"BHS|^~\\&|TESTAPP|TESTFAC|HL7BRIDGE|HL7BRIDGE|20260301120000||||LOGBATCH1\r"
                 + make_message("LOGB0001").replace(b"|ADT^A01|", b"||") + member + b"BTS|2\r")
        with MLLPConnection(port) as c:
            self.assertEqual(c.request(no_address).code, "AA")
            self.assertEqual(c.request(no_type).code, "AR")
            self.assertEqual(c.request(batch).code, "AE")
        log = wait_for(lambda: "control_id=LOGB0002" in d.log() and d.log())
        self.assertRegex(log, r"event=mapping_quarantined listener=it peer=127\.0\.0\.1\S* "
                              r"sender=TESTAPP\^TESTFAC type=ADT\^A01 control_id=LOGQ0001 code=0 "
                              r"reason=\"mandatory column 'Patient Address Line 1' is empty "
                              r"\(PID-11\.1\.1; rule 'adt'\)\"")
        self.assertRegex(log, r"event=hl7_rejected listener=it peer=\S+ sender=TESTAPP\^TESTFAC "
                              r"type= control_id=LOGR0001 code=101 reason=\"MSH-9 message type missing\"")
        self.assertRegex(log, r"event=hl7_rejected listener=it peer=\S+ sender=TESTAPP\^TESTFAC "
                              r"type= control_id=LOGB0001 code=101 ")
        self.assertRegex(log, r"event=mapping_quarantined listener=it peer=\S+ sender=TESTAPP\^TESTFAC "
                              r"type=ADT\^A04 control_id=LOGB0002 code=0 ")
        for phi in ("DOE", "JANE", "MRN123", "19800101", "SPRINGFIELD"):
            self.assertNotIn(phi, log)
        self.assertEqual(d.stop(), 0)


class RefusalLogsOnPostgreSQL(OnPostgreSQL, RefusalLogs):
    """The same on store.type postgresql."""


class MapAndCheck(HL7BridgeTestCase):
    def test_map_takes_a_batch_member_by_member(self):
        cfg = Path(self.tmp) / "c.yaml"
        cfg.write_text(f"mapping:\n  lookups:\n    users: {{file: {FIXTURES / 'users.csv'}}}\n")
        batch = FIXTURES / "batch-adt.hl7"
        self.assertTrue(is_batch(batch.read_bytes()))
        r = self.run_cmd([self.bin, "map", "-c", str(cfg), str(batch)])
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertTrue(lines[0].startswith("Creation Time\tEvent Name\t"), lines)
        rows = [l.split("\t") for l in lines[1:]]
        self.assertEqual([(c[1], c[USER_COL], c[8]) for c in rows],
                         [("Patient registered", "carl.clerk@contoso.org", "ONE"),
                          ("Patient information updated", "carl.clerk@contoso.org", "TWO")])
        self.assertIn(f"{batch}#1.3: filtered (accepted, no row): no resolved user (EVN-5.1; rule 'adt')",
                      r.stderr)

    def test_check_refuses_epic_with_csv(self):
        cfg = Path(self.tmp) / "c.yaml"
        cfg.write_text("mapping:\n  schema: epic\nsinks:\n  audit:\n    format: csv\n")
        r = self.run_cmd([self.bin, "check", "-c", str(cfg)])
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn(f"{cfg}:5:13: sinks.audit.format: csv is refused by the Epic connector "
                      "(mapping.schema: epic); use tsv or psv", r.stderr)
        cfg.write_text("mapping:\n  schema: epic\nsinks:\n  audit:\n    format: psv\n")
        r = self.run_cmd([self.bin, "check", "-c", str(cfg)])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
