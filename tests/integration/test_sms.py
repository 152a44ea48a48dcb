"""The SMS sink end to end: SIU messages over MLLP → appointment texts through
the ACS emulator (acs_emulator.py: HTTPS, signature, content hash, date skew,
body schema, repeatability) or the JSON-lines file.

Covers every SIU trigger and the book → move → cancel sequence, duplicate
and out-of-order messages, a reminder that falls due during the test,
no-consent and bad numbers, quiet hours, the retention purge, a restart with
a reminder pending, injected faults (429 + Retry-After, 500, a failed
recipient, 401) and the emulator down then up.  Messages come from
tests/fixtures/sms/siu.hl7.tmpl with times relative to now."""

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from harness import ROOT, Daemon, OnPostgreSQL, _yaml_str, free_port
from acs_emulator import AcsEmulator

FIXTURE = (ROOT / "tests" / "fixtures" / "sms" / "siu.hl7.tmpl").read_text()
KEY_B64 = base64.b64encode(b"hl7bridge-integration-access-key-0001").decode()
KEY_ENV = "HL7BRIDGE_TEST_ACS_KEY"
CELL = "^PRN^CP^^1^847^5550122"
CELL_E164 = "+18475550122"


def hl7_time(t):
    return time.strftime("%Y%m%d%H%M%S+0000", time.gmtime(t))


_ctrl = [0]


ADDRESS = "1 MAIN ST^^EVANSTON^IL^60201^USA"


def siu(trigger, appt, start, evn=None, phone=CELL, consent="Y", room="Exam 3", duration=30,
        facility="CONTOSO", first="ANA", address=ADDRESS, language=""):
    _ctrl[0] += 1
    text = FIXTURE.format(trigger=trigger, appt=appt, start=hl7_time(start),
                          evn=hl7_time(evn if evn is not None else time.time()),
                          phone=phone, consent=consent, room=room, duration=duration,
                          facility=facility, first=first, ctrl=f"SMS{os.getpid()}-{_ctrl[0]}",
                          address=address, language=language)
    return text.encode("utf-8")


def _str(v):
    """A text column's value as str, whichever store it came from (SQLite
    answers bytes here, PostgreSQL text)."""
    return v.decode() if isinstance(v, bytes) else v


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def wait_for(pred, timeout, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


class SMSDaemon(Daemon):
    """A daemon whose sinks.sms section is replaced by `sms_lines` (and
    whose mapping section gets `mapping_lines`)."""

    def __init__(self, testcase, sms_lines, mapping_lines=(), **opts):
        super().__init__(testcase, **opts)
        self.sms_lines = sms_lines
        self.mapping_lines = list(mapping_lines)

    def config_text(self, port):
        lines = super().config_text(port).split("\n")
        at = lines.index("  sms:")
        end = at + 1
        while end < len(lines) and lines[end].startswith("    "):
            end += 1
        lines = lines[:at + 1] + ["    " + l for l in self.sms_lines] + lines[end:]
        at = lines.index("mapping:")
        return "\n".join(lines[:at + 1] + ["  " + l for l in self.mapping_lines] + lines[at + 1:])

    def sms_rows(self, sql, params=()):
        return self.query(sql, params)

    def counter(self, name):
        # (on PostgreSQL one row per node: this test's one node)
        r = self.query("SELECT n FROM sms_counters WHERE name = ?", (name,))
        return int(r[0][0]) if r else 0


class SMSBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not shutil.which("openssl"):
            raise unittest.SkipTest("openssl command not installed")
        cls.pki = tempfile.mkdtemp(prefix="hl7bridge-acs-pki-")
        d = cls.pki
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                "/CN=acs-test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                "-keyout", "server.key", "-out", "server.csr", cwd=d)
        Path(d, "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
                cwd=d)
        os.environ[KEY_ENV] = KEY_B64

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.pki, True)

    def emulator(self, port=0):
        e = AcsEmulator(KEY_B64, f"{self.pki}/server.pem", f"{self.pki}/server.key", port=port)
        e.start()
        self.addCleanup(e.stop)
        return e

    def acs_lines(self, port, extra=()):
        return ["type: acs", f"endpoint: https://127.0.0.1:{port}",
                "access_key: ${" + KEY_ENV + "}", 'from: "+18005550100"',
                f"ca_file: {_yaml_str(self.pki + '/ca.pem')}", "grace_period: 1h",
                *extra]

    def daemon(self, lines, mapping_lines=()):
        d = SMSDaemon(self, lines, mapping_lines)
        d.start()
        return d

    def send(self, d, *msgs):
        with d.connect() as c:
            for m in msgs:
                ack = c.request(m)
                self.assertEqual(ack.code, "AA", f"{ack}\n{d.log()}")

    def texts(self, d, appt):
        return [(_str(k), _str(s)) for k, s in d.query(
            "SELECT kind, state FROM sms_outbox WHERE appt_id = ? ORDER BY id", (appt,))]

    def settle(self, d, timeout=10):
        """Until the worker has read every stored fact and nothing is due.
        Facts are committed with their message before the ACK, and deleted
        by the worker once applied."""
        def done():
            facts = int(d.query("SELECT COUNT(*) FROM appt_facts")[0][0])
            due = int(d.query("SELECT COUNT(*) FROM sms_outbox WHERE state = 'pending' AND "
                              "next_ms <= ?", (int(time.time() * 1000),))[0][0])
            return facts == 0 and due == 0
        self.assertTrue(wait_for(done, timeout), d.log())
        time.sleep(0.3)

    def assertNoProtocolErrors(self, emu):
        self.assertEqual(emu.errors, [], "the emulator saw protocol violations")


class Sequences(SMSBase):
    def test_book_move_modify_cancel_over_acs(self):
        emu = self.emulator()
        d = self.daemon(self.acs_lines(emu.port, ["reminders: [24h, 2h]"]))
        now = time.time()
        s1, s2 = now + 3 * 86400, now + 4 * 86400
        self.send(d, siu("S12", "A1", s1, evn=now - 40))
        self.settle(d)
        self.assertEqual(self.texts(d, "A1"),
                         [("scheduled", "sent"), ("reminder", "pending"), ("reminder", "pending")])
        self.send(d, siu("S13", "A1", s2, evn=now - 30))            # moved
        self.settle(d)  # (an update still unsent when the next one comes is superseded)
        self.send(d, siu("S14", "A1", s2, evn=now - 25))            # nothing changed
        self.send(d, siu("S14", "A1", s2, evn=now - 20, room="Exam 9"))  # place changed
        self.settle(d)
        self.assertEqual([k for k, s in self.texts(d, "A1") if s == "sent"],
                         ["scheduled", "updated", "updated"])
        dues = sorted(int(r[0]) for r in d.query(
            "SELECT due_s FROM sms_outbox WHERE appt_id = 'A1' AND kind = 'reminder' "
            "AND state = 'pending'"))
        self.assertEqual(dues, [int(s2) - 86400, int(s2) - 7200])
        self.send(d, siu("S15", "A1", s2, evn=now - 10),            # cancelled
                  siu("S12", "A2", s1, evn=now - 10), siu("S12", "A3", s1, evn=now - 10))
        self.settle(d)
        self.send(d, siu("S17", "A2", s1, evn=now - 5),             # deleted
                  siu("S26", "A3", s1, evn=now - 5))                # no-show
        self.settle(d)
        self.assertEqual(self.texts(d, "A1"), [("scheduled", "sent"), ("updated", "sent"),
                                               ("updated", "sent"), ("cancelled", "sent")])
        self.assertEqual(self.texts(d, "A2"), [("scheduled", "sent"), ("cancelled", "sent")])
        self.assertEqual(self.texts(d, "A3"), [("scheduled", "sent")])
        got = emu.delivered()
        self.assertEqual(len(got), 7)
        self.assertTrue(all(g["to"] == CELL_E164 for g in got))
        self.assertIn("Exam 9", got[2]["message"])
        self.assertIn("cancelled", got[3]["message"])
        self.assertEqual(len({g["request_id"] for g in got}), 7)
        self.assertNoProtocolErrors(emu)
        self.assertEqual(d.counter("sent"), 7)
        d.assert_stops_cleanly()

    def test_duplicates_and_out_of_order(self):
        out = tempfile.mkdtemp(prefix="hl7bridge-sms-")
        self.addCleanup(shutil.rmtree, out, True)
        d = self.daemon(["type: file", f"path: {_yaml_str(out + '/sms.jsonl')}",
                         "reminders: []"])
        now = time.time()
        s1, s2 = now + 86400, now + 2 * 86400
        book = siu("S12", "D1", s1, evn=now - 60)
        again = siu("S12", "D1", s1, evn=now - 60)                  # re-sent, new control id
        self.send(d, book, again, book)                             # same control id too
        self.send(d, siu("S13", "D2", s2, evn=now - 10),            # the move arrives first
                  siu("S12", "D2", s1, evn=now - 60))
        self.send(d, siu("S15", "D3", s1, evn=now - 5),             # cancel before booking
                  siu("S12", "D3", s1, evn=now - 60))
        self.settle(d)
        self.assertEqual(self.texts(d, "D1"), [("scheduled", "sent")])
        self.assertEqual(self.texts(d, "D2"), [("updated", "sent")])
        self.assertEqual(self.texts(d, "D3"), [("cancelled", "sent")])
        start = int(d.query("SELECT start_s FROM sms_appointments WHERE appt_id = 'D2'")[0][0])
        self.assertEqual(start, int(s2))
        self.assertEqual(d.counter("duplicate_event"), 1)
        self.assertEqual(d.counter("stale_event"), 2)
        lines = [json.loads(l) for l in Path(out, "sms.jsonl").read_text().splitlines()]
        self.assertEqual([l["kind"] for l in lines], ["scheduled", "updated", "cancelled"])
        self.assertEqual(os.stat(Path(out, "sms.jsonl")).st_mode & 0o777, 0o600)
        d.assert_stops_cleanly()

    def test_consent_and_numbers(self):
        emu = self.emulator()
        # (and a facility of its own sends from its own number)
        d = self.daemon(self.acs_lines(emu.port, ["reminders: []", "facilities:",
                                                  "  - codes: [NORTH]",
                                                  '    from: "+18005550111"']))
        now = time.time()
        s = now + 86400
        self.send(d, siu("S12", "N1", s, consent="N"),
                  siu("S12", "N2", s, phone="^PRN^CP^^^^555-0122"),
                  siu("S12", "N3", s, phone=""),
                  siu("S12", "N4", s, phone="(847) 555-0122^PRN^CP"),
                  siu("S12", "N5", s, phone="^PRN^CP" + "^" * 9 + "+442079460958"),
                  # country code in XTN-5: international, not the default country
                  siu("S12", "N6", s, phone="^PRN^CP^^44^7700^900123"),
                  siu("S12", "N7", s, facility="NORTH", phone="^PRN^CP^^1^312^5550177"))
        self.settle(d)
        self.assertEqual(d.counter("no_consent"), 1)
        self.assertEqual(d.counter("bad_number"), 1)
        self.assertEqual(d.counter("no_number"), 1)
        got = sorted((g["to"], g["from"]) for g in emu.delivered())
        self.assertEqual(got, [("+13125550177", "+18005550111"), ("+18475550122", "+18005550100"),
                               ("+442079460958", "+18005550100"),
                               ("+447700900123", "+18005550100")])
        self.assertNoProtocolErrors(emu)


class OwnRules(SMSBase):
    """The texts follow the SMS settings, not the audit outcome."""

    def file_daemon(self, extra=(), mapping_lines=()):
        out = tempfile.mkdtemp(prefix="hl7bridge-sms-")
        self.addCleanup(shutil.rmtree, out, True)
        rem = [] if any(e.startswith("reminders:") for e in extra) else ["reminders: []"]
        d = self.daemon(["type: file", f"path: {_yaml_str(out + '/sms.jsonl')}", *rem, *extra],
                        mapping_lines)
        d.sms_file = Path(out, "sms.jsonl")
        return d

    def lines(self, d):
        if not d.sms_file.exists():
            return []
        return [json.loads(l) for l in d.sms_file.read_text().splitlines()]

    def test_quarantined_siu_is_texted(self):
        d = self.file_daemon()
        s = time.time() + 86400
        # No patient address: the audit rules quarantine it (a mandatory
        # column is empty), and the patient is texted all the same.
        self.send(d, siu("S12", "Q1", s, address=""))
        self.settle(d)
        q = d.query("SELECT quarantined FROM messages")
        self.assertEqual(q, [(1,)], "the message is quarantined by the audit rules")
        self.assertEqual(self.texts(d, "Q1"), [("scheduled", "sent")])
        got = self.lines(d)
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0]["to"], "+*******0122")  # masked in the file (mask_numbers)
        self.assertIn("sms_event msg_id=1 trigger=S12 confirmation=scheduled", d.log())
        # the facts were read and are gone from the journal (no PHI left there)
        self.assertEqual(d.query("SELECT COUNT(*) FROM appt_facts")[0][0], 0)
        d.assert_stops_cleanly()


    def test_spanish_template_chosen_by_pid15(self):
        d = self.file_daemon([
            "languages:",
            "  - codes: [es, spa]",
            "    templates:",
            "      scheduled: \"Hola {first_name}, su cita en {location} es el {start:%d/%m %H:%M}.\"",
        ])
        s = time.time() + 86400
        self.send(d, siu("S12", "L1", s, language="SPA^Spanish^HL70296"),
                  siu("S12", "L2", s, language="es-MX"),
                  siu("S12", "L3", s, language="fr"),
                  siu("S12", "L4", s))
        self.settle(d)
        got = {json.loads(l)["message"].split(",")[0] for l in d.sms_file.read_text().splitlines()}
        msgs = [json.loads(l)["message"] for l in d.sms_file.read_text().splitlines()]
        self.assertEqual(len(msgs), 4)
        self.assertEqual(sum(m.startswith("Hola ANA") for m in msgs), 2, msgs)
        self.assertEqual(sum(m.startswith("Hi ANA") for m in msgs), 2, msgs)
        self.assertIn("Hola ANA", got)
        d.assert_stops_cleanly()

    def test_facilities_and_links(self):
        """Each scheduling facility's texts go out with its own number,
        zone, template and link; an unlisted facility gets the global ones;
        the join link is a template over the appointment's fields with the
        values URL-encoded, and a link the rules map from the message wins."""
        rules = Path(tempfile.mkdtemp(prefix="hl7bridge-sms-rules-"))
        self.addCleanup(shutil.rmtree, rules, True)
        siu_rules = (ROOT / "config" / "mappings" / "siu.yaml").read_text()
        self.assertIn('# link: "{ZVV-1}"', siu_rules)
        (rules / "siu.yaml").write_text(siu_rules.replace('# link: "{ZVV-1}"', 'link: "{ZVV-1}"'))
        fmt = "{start:%H:%M %z}"
        d = self.file_daemon([
            'from: "+18005550100"',
            "time_zone: UTC",
            'link: "https://g.test/j/{appointment_id}"',
            f'templates: {{scheduled: "G {fmt} {{link}}"}}',
            "facilities:",
            "  - codes: [NORTH, NORTH2]",
            '    from: "+18005550111"',
            "    time_zone: America/Chicago",
            f'    templates: {{scheduled: "N {fmt} {{link}}"}}',
            '    link: "https://n.test/v?id={appointment_id}&f={facility}"',
            "  - codes: [SOUTH]",
            '    from: "+18005550122"',
            "    time_zone: Asia/Tokyo",
            f'    templates: {{scheduled: "S {fmt} {{link}}"}}',
        ], mapping_lines=["rules:", f"  - {_yaml_str(rules / 'siu.yaml')}"])
        start = int(time.time()) + 2 * 86400
        joined = siu("S12", "J1", start, facility="NORTH").rstrip(b"\r\n")
        sep = b"\r" if b"\r" in joined else b"\n"
        joined += sep + b"ZVV|https://visit.test/r/77?k=abc" + sep
        self.send(d, siu("S12", "V 1/2?x", start, facility="NORTH"),
                  siu("S12", "S1", start, facility="SOUTH"),
                  siu("S12", "G1", start, facility="CONTOSO"),
                  siu("S12", "N2", start, facility="NORTH2"),
                  joined)
        self.settle(d)

        def local(zone):
            return datetime.fromtimestamp(start, ZoneInfo(zone)).strftime("%H:%M %z")
        got = sorted((l["from"], l["message"]) for l in self.lines(d))
        self.assertEqual(got, sorted([
            ("+18005550111", f"N {local('America/Chicago')} "
                             "https://n.test/v?id=V%201%2F2%3Fx&f=NORTH"),
            ("+18005550111", f"N {local('America/Chicago')} https://n.test/v?id=N2&f=NORTH2"),
            ("+18005550111", f"N {local('America/Chicago')} https://visit.test/r/77?k=abc"),
            ("+18005550122", f"S {local('Asia/Tokyo')} https://g.test/j/S1"),
            ("+18005550100", f"G {local('UTC')} https://g.test/j/G1"),
        ]), d.log())
        d.assert_stops_cleanly()

    def test_kind_switched_off_sends_nothing(self):
        d = self.file_daemon(["reminders: [24h, 2h]",
                              "send: {scheduled: false, updated: true, cancelled: true, "
                              "reminder: false}"])
        now = time.time()
        s1, s2 = now + 3 * 86400, now + 4 * 86400
        self.send(d, siu("S12", "K1", s1, evn=now - 30))
        self.settle(d)
        self.assertEqual(self.texts(d, "K1"), [])          # no confirmation, no reminders
        self.assertEqual(d.counter("kind_off"), 1)
        self.send(d, siu("S13", "K1", s2, evn=now - 20))     # updates stay on
        self.settle(d)
        self.assertEqual(self.texts(d, "K1"), [("updated", "sent")])
        d.assert_stops_cleanly()


class Reminders(SMSBase):
    def test_reminder_falls_due(self):
        emu = self.emulator()
        d = self.daemon(self.acs_lines(emu.port, ["reminders: [1h]"]))
        start = time.time() + 3600 + 5
        self.send(d, siu("S12", "R1", start))
        self.assertTrue(wait_for(lambda: len(emu.delivered()) >= 2, 20), d.log())
        got = emu.delivered()
        self.assertEqual(len(got), 2)
        self.assertIn("Reminder", got[1]["message"])
        self.assertGreaterEqual(got[1]["time"], start - 3600 - 1)
        self.assertEqual(self.texts(d, "R1"), [("scheduled", "sent"), ("reminder", "sent")])
        self.assertNoProtocolErrors(emu)

    def test_quiet_hours_move_reminders_earlier(self):
        out = tempfile.mkdtemp(prefix="hl7bridge-sms-")
        self.addCleanup(shutil.rmtree, out, True)
        now = time.time()
        start = int(now) + 3 * 3600
        due = start - 3600
        # a one-hour quiet window (UTC) that opens 2 minutes before the reminder
        qs = time.gmtime(due - 120)
        qe = time.gmtime(due - 120 + 3600)
        d = self.daemon(["type: file", f"path: {_yaml_str(out + '/sms.jsonl')}",
                         "reminders: [1h]", "time_zone: UTC",
                         f'quiet_hours: {{start: "{qs.tm_hour:02d}:{qs.tm_min:02d}", '
                         f'end: "{qe.tm_hour:02d}:{qe.tm_min:02d}"}}'])
        self.send(d, siu("S12", "Q1", start))
        self.settle(d)
        (got,), = d.query("SELECT due_s FROM sms_outbox WHERE appt_id = 'Q1' AND kind = 'reminder'")
        window_open = (due - 120) // 60 * 60
        self.assertEqual(int(got), window_open - 60)
        self.assertLess(int(got), start)

    def test_restart_with_reminder_pending(self):
        emu = self.emulator()
        d = self.daemon(self.acs_lines(emu.port, ["reminders: [1h]"]))
        start = time.time() + 3600 + 6
        self.send(d, siu("S12", "P1", start))
        self.assertTrue(wait_for(lambda: len(emu.delivered()) >= 1, 10), d.log())
        d.assert_stops_cleanly()
        self.assertEqual(len(emu.delivered()), 1)
        d.start()
        self.assertTrue(wait_for(lambda: len(emu.delivered()) >= 2, 20), d.log())
        time.sleep(1.5)
        got = emu.delivered()
        self.assertEqual(len(got), 2, "the reminder must go exactly once")
        self.assertEqual(self.texts(d, "P1"), [("scheduled", "sent"), ("reminder", "sent")])
        self.assertNoProtocolErrors(emu)


class Retention(SMSBase):
    def test_no_number_left_after_the_appointment(self):
        out = tempfile.mkdtemp(prefix="hl7bridge-sms-")
        self.addCleanup(shutil.rmtree, out, True)
        d = self.daemon(["type: file", f"path: {_yaml_str(out + '/sms.jsonl')}",
                         "reminders: [24h]", "grace_period: 0s"])
        now = time.time()
        self.send(d, siu("S12", "P1", now - 3600, evn=now - 7200, duration=30),  # over
                  siu("S12", "P2", now + 86400 * 2, evn=now - 60),
                  siu("S15", "P2", now + 86400 * 2, evn=now - 30))               # cancelled
        self.settle(d)

        def purged():
            return d.query("SELECT COUNT(*) FROM sms_appointments WHERE purged = 0")[0][0] == 0
        self.assertTrue(wait_for(purged, 5), d.log())
        left = d.query("SELECT COUNT(*) FROM sms_appointments WHERE phone IS NOT NULL OR "
                       "first_name IS NOT NULL OR location IS NOT NULL OR provider IS NOT NULL")
        self.assertEqual(left[0][0], 0)
        self.assertEqual(d.query("SELECT COUNT(*) FROM sms_outbox WHERE to_e164 IS NOT NULL "
                                 "OR text IS NOT NULL")[0][0], 0)
        for table in ("sms_appointments", "sms_outbox"):
            for row in d.query(f"SELECT * FROM {table}"):
                self.assertNotIn(b"5550122", b"|".join(
                    str(v).encode() if not isinstance(v, bytes) else v for v in row))


class Faults(SMSBase):
    def test_throttle_errors_and_failed_recipient(self):
        emu = self.emulator()
        emu.fail_next("http", 429, {"Retry-After": "1"})
        emu.fail_next("http", 500)
        emu.fail_next("recipient", 503)
        d = self.daemon(self.acs_lines(emu.port, ["reminders: []"]))
        t0 = time.time()
        self.send(d, siu("S12", "F1", time.time() + 86400))
        self.assertTrue(wait_for(lambda: len(emu.delivered()) >= 1, 20), d.log())
        self.assertGreaterEqual(time.time() - t0, 1.0)  # Retry-After was honoured
        ids = [rid for _, rid in emu.requests]
        self.assertEqual(len(ids), 4)
        self.assertEqual(len(set(ids)), 1, "retries keep the repeatability id")
        self.assertEqual(len(set(emu.first_sent.values())), 1)
        self.assertEqual(self.texts(d, "F1"), [("scheduled", "sent")])
        self.assertEqual(d.counter("retries"), 3)
        # a recipient refused for good: failed, never retried
        emu.fail_next("recipient", 400, message="Invalid To phone number format.")
        self.send(d, siu("S12", "F2", time.time() + 86400))
        self.settle(d)
        time.sleep(1)
        self.assertEqual(self.texts(d, "F2"), [("scheduled", "failed")])
        self.assertEqual(len(emu.requests), 5)
        err = d.query("SELECT last_status, last_error FROM sms_outbox WHERE appt_id = 'F2'")[0]
        self.assertEqual(err[0], 400)
        self.assertNoProtocolErrors(emu)

    def test_repeated_request_is_not_delivered_twice(self):
        emu = self.emulator()
        d = self.daemon(self.acs_lines(emu.port, ["reminders: []"]))
        self.send(d, siu("S12", "X1", time.time() + 86400))
        self.assertTrue(wait_for(lambda: len(emu.delivered()) >= 1, 10), d.log())
        rid = emu.delivered()[0]["request_id"]
        # the same id again (as after a crash between send and record): the
        # emulator answers without delivering it a second time
        d.assert_stops_cleanly()
        con = d.db()
        con.execute("UPDATE sms_outbox SET state = 'pending', text = 'again', to_e164 = ?, "
                    "next_ms = 0 WHERE appt_id = 'X1'", (CELL_E164,))
        con.commit()
        d.start()
        self.assertTrue(wait_for(lambda: len(emu.requests) >= 2, 10), d.log())
        self.assertEqual(len(emu.delivered()), 1)
        self.assertEqual(emu.requests[-1], (202, rid))
        self.assertTrue(wait_for(lambda: self.texts(d, "X1") == [("scheduled", "sent")], 5))

    def test_wrong_key_is_reported_not_looped(self):
        emu = self.emulator()
        os.environ["HL7BRIDGE_TEST_ACS_BADKEY"] = base64.b64encode(b"not-the-right-key").decode()
        lines = [l if not l.startswith("access_key") else
                 "access_key: ${HL7BRIDGE_TEST_ACS_BADKEY}"
                 for l in self.acs_lines(emu.port, ["reminders: []"])]
        d = self.daemon(lines)
        now = time.time()
        self.send(d, siu("S12", "K1", now + 86400), siu("S12", "K2", now + 86400))
        self.assertTrue(wait_for(lambda: "event=sms_auth_failed" in d.log(), 10), d.log())
        time.sleep(1.5)
        self.assertEqual(len(emu.requests), 1, "a refused signature is not retried")
        self.assertEqual(emu.delivered(), [])
        self.assertEqual(self.texts(d, "K1"), [("scheduled", "failed")])
        self.assertEqual(self.texts(d, "K2"), [("scheduled", "pending")])
        self.assertNotIn(base64.b64encode(b"not-the-right-key").decode(), d.log())

    def test_emulator_down_then_up(self):
        port = free_port()
        d = self.daemon(self.acs_lines(port, ["reminders: []"]))
        self.send(d, siu("S12", "U1", time.time() + 86400))
        time.sleep(3)
        self.assertEqual(self.texts(d, "U1"), [("scheduled", "pending")])
        self.assertGreaterEqual(d.counter("retries"), 1)
        emu = self.emulator(port)
        self.assertTrue(wait_for(lambda: len(emu.delivered()) >= 1, 20), d.log())
        self.assertTrue(wait_for(lambda: self.texts(d, "U1") == [("scheduled", "sent")], 5))
        self.assertEqual(len(emu.delivered()), 1)
        self.assertNoProtocolErrors(emu)


class ScheduleOnPostgreSQL(OnPostgreSQL, SMSBase):
    """The tests that exercise the schedule's store (appointments applied in
    order, texts superseded and dropped, a restart with a reminder pending)
    with it on PostgreSQL, one node (two: test_pg_delivery.TwoNodesTextOnce).
    The others test what does not depend on the store (numbers, templates,
    quiet hours, the provider's faults) and run on SQLite only."""

    test_book_move_modify_cancel_over_acs = Sequences.test_book_move_modify_cancel_over_acs
    test_duplicates_and_out_of_order = Sequences.test_duplicates_and_out_of_order
    test_restart_with_reminder_pending = Reminders.test_restart_with_reminder_pending


if __name__ == "__main__":
    unittest.main()
