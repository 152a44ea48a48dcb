"""Answers every real sender and client understands (issue: ACKs), and a
reused control id that is not a re-send: the MLLP frame end (strict and
lenient), long runs of start bytes, batch ACKs that say what was stored,
MSH-9 without a trigger, unusual delimiters, MSA-2 recovered for every
answer, NUL bytes, batch delimiters, MSH-11 echo, enhanced mode in `send`,
and duplicates recognised by content.  Messages are the project's own,
sent with Debian's `mllp_send` (python3-hl7), npm's node-hl7-client and
`hl7bridge send`."""

import os
import re
import socket
import subprocess
import time
import unittest

from harness import (CR, EB, SB, ROOT, Ack, DaemonTestCase, MLLPConnection, OnPostgreSQL,
                     binary_path, frame, make_message)
from test_metrics import MetricsDaemon


MLLP_SEND = "/usr/bin/mllp_send"


def mllp_send(testcase, daemon, msgs, name="stream.mllp"):
    """Sends each message with Debian's python3-hl7 `mllp_send` (which reads
    MLLP-framed messages from a file and prints each ACK framed); returns
    the ACKs' contents in order."""
    if not os.access(MLLP_SEND, os.X_OK):
        testcase.skipTest(f"{MLLP_SEND} is not installed (Debian package python3-hl7)")
    f = daemon.dir / name
    f.write_bytes(b"".join(frame(m) for m in msgs))
    try:
        r = subprocess.run([MLLP_SEND, "-p", str(daemon.port), "-f", str(f), "127.0.0.1"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
    except subprocess.TimeoutExpired:
        testcase.fail("mllp_send did not finish within 60 s")
    testcase.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
    return re.findall(rb"\x0b(.*?)\x1c\r", r.stdout, re.S)


def wait_for(pred, what, timeout=15):
    """Polls pred() until true (figures sampled once a second); a hang guard."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout} s: {what}")
        time.sleep(0.2)


class FrameEnd(DaemonTestCase):
    """listen[].frame_end: strict (the default) needs 0x1C 0x0D."""

    def test_strict_frame_end_needs_the_cr(self):
        msg = make_message("FEND0001")
        with self.daemon.connect() as c:
            c.send_raw(SB + msg + EB)
            with self.assertRaises(socket.timeout):
                c.recv_frame(timeout=3)
            c.send_raw(CR)  # the end marker completed: now it is a frame
            ack = c.recv_ack()
        self.assertEqual((ack.code, ack.control_id_text), ("AA", "FEND0001"))

    def test_300_kb_of_start_bytes_then_a_message(self):
        msg = make_message("FEND0002")
        with self.daemon.connect() as c:
            c.send_raw(SB * 300000 + frame(msg))
            ack = c.recv_ack()
        self.assertEqual((ack.code, ack.control_id_text), ("AA", "FEND0002"))
        self.assertAlive()

    def test_map_and_send_on_a_file_of_start_bytes(self):
        f = self.daemon.dir / "sb.bin"
        f.write_bytes(SB * 300000)
        r = self.run_cmd([str(binary_path()), "map", "-c", str(self.daemon.config_path), str(f)])
        self.assertIn(r.returncode, (0, 1), r.stderr)
        r = self.run_cmd([str(binary_path()), "send", self.daemon.address, str(f)])
        self.assertIn(r.returncode, (0, 1), r.stderr)
        f.write_bytes(SB * 300000 + frame(make_message("FEND0003")))
        r = self.run_cmd([str(binary_path()), "send", self.daemon.address, str(f)])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(b"MSA|AA|FEND0003", r.stdout)


class LenientFrameEnd(DaemonTestCase):
    DAEMON_OPTS = {"frame_end": "lenient"}

    def test_lone_end_byte_ends_the_frame_after_a_pause(self):
        with self.daemon.connect() as c:
            c.send_raw(SB + make_message("LEN00001") + EB)
            ack = c.recv_ack(timeout=15)
            self.assertEqual((ack.code, ack.control_id_text), ("AA", "LEN00001"))
            # back to back: the next start byte ends the previous frame at once
            c.send_raw(SB + make_message("LEN00002") + EB + SB + make_message("LEN00003") + EB + CR)
            acks = [c.recv_ack(timeout=15) for _ in range(2)]
        self.assertEqual([(a.code, a.control_id_text) for a in acks],
                         [("AA", "LEN00002"), ("AA", "LEN00003")])
        for cid in ("LEN00001", "LEN00002", "LEN00003"):
            self.assertEqual(self.daemon.count_control_id(cid), 1, cid)

    def test_strict_senders_still_work(self):
        with self.daemon.connect() as c:
            ack = c.request(make_message("LEN00004"))
        self.assertEqual((ack.code, ack.control_id_text), ("AA", "LEN00004"))


def msg(cid, msh9="ADT^A01", version="2.5", enc="^~\\&", proc="P", app="ACKAPP", body=None):
    """A small message of our own with the given MSH-2/MSH-9/MSH-11/MSH-12."""
    segs = [f"MSH|{enc}|{app}|ACKFAC|HL7BRIDGE|HL7BRIDGE|20260301120000||{msh9}|{cid}|{proc}|{version}",
            "EVN|A01|20260301120000",
            body or "PID|1||MRN555^^^HOSP^MR||DOE^JOHN||19700101|M"]
    return ("\r".join(segs) + "\r").encode("latin-1")


def send_cmd(testcase, daemon, files, *opts):
    try:
        return subprocess.run([str(binary_path()), "send", *opts, daemon.address, *map(str, files)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)
    except subprocess.TimeoutExpired:
        testcase.fail("hl7bridge send did not finish within 60 s")


class AckDefects(DaemonTestCase):
    """One test per defect class of the ACK issue."""

    def stored(self, cid):
        return self.daemon.count_control_id(cid)

    # 1. a batch ACK says exactly what was stored; counts only warn
    def test_fhs_fts_without_bhs_all_members_stored_gets_aa(self):
        batch = (b"FHS|^~\\&|ACKAPP|ACKFAC|||20260301120000||||FILE0001\r"
                 + msg("FB000001") + msg("FB000002") + b"FTS|1\r")
        acks = [Ack(a) for a in mllp_send(self, self.daemon, [batch])]
        self.assertEqual(len(acks), 1)
        self.assertEqual((acks[0].code, acks[0].control_id_text), ("AA", "FILE0001"))
        self.assertIn("2 of 2 messages stored", acks[0].text)
        self.assertNotIn("warning", acks[0].text)  # FHS/FTS without BHS: one batch
        self.assertIsNone(acks[0].err_segment)
        self.assertEqual((self.stored("FB000001"), self.stored("FB000002")), (1, 1))

    def test_batch_count_mismatch_is_a_warning_not_a_negative_answer(self):
        f = self.daemon.dir / "batch.hl7"
        f.write_bytes(b"BHS|^~\\&|ACKAPP|ACKFAC|||20260301120000||||BAT00001\r"
                      + msg("BC000001") + msg("BC000002") + b"BTS|5\r")
        r = send_cmd(self, self.daemon, [f])
        out = r.stdout.decode()
        self.assertEqual(r.returncode, 0, out + r.stderr.decode())
        self.assertIn("MSA|AA|BAT00001|Batch accepted: 2 of 2 messages stored; warning: BTS-1", out)
        self.assertEqual((self.stored("BC000001"), self.stored("BC000002")), (1, 1))
        self.assertRegex(self.daemon.log(), r"level=warn event=batch_count_mismatch listener=it "
                                            r".*segment=BTS")

    def test_batch_with_one_bad_member_names_what_was_stored(self):
        batch = (b"BHS|^~\\&|ACKAPP|ACKFAC|||20260301120000||||BAT00002\r"
                 + msg("BM000001") + msg("BM000002", version="9.9") + msg("BM000003") + b"BTS|3\r")
        with self.daemon.connect() as c:
            ack = c.request(batch)
        self.assertEqual((ack.code, ack.control_id_text), ("AE", "BAT00002"))
        self.assertIn("2 of 3 messages stored, 1 not accepted (first: message 2)", ack.text)
        self.assertEqual(ack.err_code, "203")
        self.assertEqual([self.stored(c) for c in ("BM000001", "BM000002", "BM000003")], [1, 0, 1])

    # 2. a batch with a trailer and no header
    def test_trailer_without_header_is_a_batch(self):
        with self.daemon.connect() as c:
            one = c.request(msg("TR000001") + b"BTS|1\r")
            two = c.request(msg("TR000002") + msg("TR000003") + b"BTS|2\r")
        self.assertEqual((one.code, one.control_id_text), ("AA", "TR000001"))
        self.assertEqual((two.code, two.control_id_text), ("AA", "TR000002"))
        self.assertIn("2 of 2 messages stored", two.text)
        self.assertEqual([self.stored(c) for c in ("TR000001", "TR000002", "TR000003")], [1, 1, 1])

    # 3. MSH-9 without a trigger
    def test_msh9_without_trigger_accepted_at_every_version(self):
        files = []
        for i, v in enumerate(("2.1", "2.2", "2.3", "2.4", "2.5", "2.5.1")):
            f = self.daemon.dir / f"oru{i}.hl7"
            f.write_bytes(msg(f"NT00000{i}", msh9="ORU", version=v,
                              body="OBX|1|ST|GLU^Glucose||95"))
            files.append(f)
        r = send_cmd(self, self.daemon, files)
        out = r.stdout.decode()
        self.assertEqual(r.returncode, 0, out + r.stderr.decode())
        for i in range(6):
            self.assertIn(f"MSA|AA|NT00000{i}|", out)
            self.assertEqual(self.stored(f"NT00000{i}"), 1)
        row = self.daemon.query("SELECT msg_type, \"trigger\" FROM messages WHERE control_id = 'NT000004'")
        self.assertEqual(row, [(b"ORU", b"")])

    # 4. legal but unusual delimiters
    def test_letter_and_unusual_delimiters_are_accepted(self):
        cases = [("LD000001", "^R\\&", "ADT^A01"),   # a letter as repetition separator
                 ("LD000002", "Q~\\&", "ADTQA01"),   # a letter as component separator
                 ("LD000003", "*@!%", "ADT*A01")]   # punctuation throughout
        with self.daemon.connect() as c:
            acks = [c.request(msg(cid, enc=enc, msh9=m9)) for cid, enc, m9 in cases]
        for (cid, _, _), ack in zip(cases, acks):
            self.assertEqual((ack.code, ack.control_id_text), ("AA", cid), ack.raw)
            self.assertEqual(self.stored(cid), 1)
        self.assertTrue(acks[2].raw.startswith(b"MSH|*@!%|"), acks[2].raw)  # echoed
        self.assertIn(b"|ACK*A01*ACK|", acks[2].raw)
        self.assertTrue(acks[0].raw.startswith(b"MSH|^~\\&|"), acks[0].raw)  # a letter: ours

    # 5. an AR whose MSH-10 could be read carries it in MSA-2
    def test_rejections_echo_the_control_id(self):
        cases = [("BR000001", msg("BR000001", enc="^^\\&")),      # duplicate encoding character
                 ("BR000002", msg("BR000002", enc="^~\\\\&")),    # escape character doubled
                 ("BR000003", msg("BR000003", enc="")),           # MSH-2 missing
                 ("BR000004", msg("BR000004", version="9.9")),
                 ("BR000005", msg("BR000005") + b"pid|1\r")]      # bad segment id
        acks = [Ack(a) for a in mllp_send(self, self.daemon, [m for _, m in cases])]
        self.assertEqual(len(acks), len(cases))
        for (cid, _), ack in zip(cases, acks):
            self.assertEqual(ack.code, "AR", ack.raw)
            self.assertEqual(ack.control_id_text, cid, ack.raw)
            self.assertTrue(ack.err_code, ack.raw)
            self.assertEqual(self.stored(cid), 0)

    # 6. NUL bytes
    def test_nul_byte_gets_ar_naming_the_location_and_is_never_echoed(self):
        bad = msg("NU000001", body="PID|1||MRN1^^^HOSP^MR||DOE\x00^JOHN")
        bad_id = msg("NU00\x00002")
        f = self.daemon.dir / "nul.hl7"
        f.write_bytes(bad + bad_id)
        with self.daemon.connect() as c:
            a = c.request(bad)
            b = c.request(bad_id)
        self.assertEqual((a.code, a.control_id_text, a.err_code), ("AR", "NU000001", "102"))
        self.assertIn(b"|PID^1^5|", a.err_segment)
        self.assertEqual(b.code, "AR")
        self.assertEqual(b.control_id, b"NU00\\X00\\002")
        for ack in (a, b):
            self.assertNotIn(b"\x00", ack.raw)
        r = send_cmd(self, self.daemon, [f])
        out = r.stdout.decode("latin-1")
        self.assertEqual(r.returncode, 1)
        self.assertIn("MSA|AR|NU000001|", out)
        self.assertIn("MSA|AR|NU00\\X00\\002|", out)
        self.assertEqual(self.daemon.query("SELECT COUNT(*) FROM messages"), [(0,)])

    # 7. a batch header with other delimiters than its messages
    def test_batch_delimiters_differ_from_messages_gets_ar(self):
        batch = (b"BHS|^~\\&#|ACKAPP|ACKFAC|||20260301120000||||BAT00003\r"
                 + msg("BD000001") + b"BTS|1\r")
        with self.daemon.connect() as c:
            ack = c.request(batch)
        self.assertEqual((ack.code, ack.control_id_text, ack.err_code), ("AR", "BAT00003", "102"))
        self.assertEqual(self.stored("BD000001"), 0)

    # 9. MSH-11 echoed, empty included
    def test_msh11_is_echoed(self):
        with self.daemon.connect() as c:
            empty = c.request(msg("PI000001", proc=""))
            training = c.request(msg("PI000002", proc="T"))
        self.assertEqual(empty.code, "AA")
        self.assertEqual(empty.msh.split(b"|")[10], b"")
        self.assertEqual(training.msh.split(b"|")[10], b"T")


class NodeClient(DaemonTestCase):
    """npm's node-hl7-client (tests/integration/node/send.mjs) reads our
    answers: MSH-9 without trigger, empty MSH-11, a reused control id."""

    def test_node_client_matches_every_answer(self):
        from test_node_client import NODE_DIR, ensure_node_modules
        node = ensure_node_modules(self)
        files = []
        for name, data in (("oru.hl7", msg("NC000001", msh9="ORU", version="2.3",
                                           body="OBX|1|ST|GLU^Glucose||95")),
                           ("noproc.hl7", msg("NC000002", proc="")),
                           ("first.hl7", msg("NC000003")),
                           ("reused.hl7", msg("NC000003", body="PID|1||MRN777^^^HOSP^MR||ROE^ANN"))):
            f = self.daemon.dir / name
            f.write_bytes(data)
            files.append(str(f))
        try:
            r = subprocess.run([node, "send.mjs", "--port", str(self.daemon.port), "--count", "0",
                                "--timeout-ms", "10000", *files], cwd=str(NODE_DIR),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=60)
        except subprocess.TimeoutExpired:
            self.fail("node send.mjs did not finish within 60 s")
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
        import json
        lines = [json.loads(l) for l in r.stdout.decode().splitlines() if l.strip()]
        acks = [(l["sent"], l["msa1"], l["msa2"]) for l in lines if "msa1" in l]
        self.assertEqual(acks, [("NC000001", "AA", "NC000001"), ("NC000002", "AA", "NC000002"),
                                ("NC000003", "AA", "NC000003"), ("NC000003", "AA", "NC000003")])
        self.assertEqual(self.daemon.count_control_id("NC000003"), 2)


class EnhancedModeSend(DaemonTestCase):
    """10. `hl7bridge send` reads MSH-15 and does not wait where no accept
    ACK is due."""
    DAEMON_OPTS = {"ack_mode": "enhanced"}

    def enh(self, cid, accept, app_ack="AL", version="2.5"):
        m = msg(cid, version=version).split(b"\r", 1)
        return m[0] + f"|||{accept}|{app_ack}".encode() + b"\r" + m[1]

    def test_no_ack_due_is_not_waited_for(self):
        f = self.daemon.dir / "enh.hl7"
        f.write_bytes(self.enh("EN000001", "NE") + self.enh("EN000002", "ER")
                      + self.enh("EN000003", "AL") + self.enh("EN000004", "SU")
                      + self.enh("EN000005", "NE", app_ack="NE") + self.enh("EN000006", "ER"))
        for window in ("1", "4"):
            r = send_cmd(self, self.daemon, [f], "--timeout", "30", "--window", window)
            out = r.stdout.decode()
            self.assertEqual(r.returncode, 0, out + r.stderr.decode())
            self.assertNotIn("timed out", out + r.stderr.decode())
            lines = out.splitlines()
            self.assertEqual(len(lines), 6, out)
            self.assertIn("#1 no ACK (MSH-15 NE: none due)", lines[0])
            self.assertIn("#2 no ACK (MSH-15 ER: accepted)", lines[1])
            self.assertIn("#3 MSA|CA|EN000003|", lines[2])
            self.assertIn("#4 MSA|CA|EN000004|", lines[3])
            self.assertIn("#5 no ACK (MSH-15 NE: none due)", lines[4])
            self.assertIn("#6 no ACK (MSH-15 ER: accepted)", lines[5])
        for i in range(1, 7):
            self.assertEqual(self.daemon.count_control_id(f"EN00000{i}"), 1)

    def test_error_answers_are_matched_to_their_message(self):
        f = self.daemon.dir / "enh-bad.hl7"
        f.write_bytes(self.enh("EB000001", "ER") + self.enh("EB000002", "ER", version="9.9")
                      + self.enh("EB000003", "SU", version="9.9") + self.enh("EB000004", "AL"))
        r = send_cmd(self, self.daemon, [f], "--timeout", "30")
        out = r.stdout.decode()
        self.assertEqual(r.returncode, 1, out)
        self.assertNotIn("timed out", out + r.stderr.decode())
        self.assertIn("#1 no ACK (MSH-15 ER: accepted)", out)
        self.assertIn("#2 MSA|CR|EB000002|", out)
        self.assertIn("#3 no ACK (MSH-15 SU: not accepted)", out)
        self.assertIn("#4 MSA|CA|EB000004|", out)


class ControlIdReused(unittest.TestCase):
    """A re-send is recognised by its content (everything but MSH-7); the
    same MSH-3/4/10 with other content is a new message: stored, AA,
    logged and counted."""

    def setUp(self):
        self.daemon = MetricsDaemon(self)
        self.daemon.start()

    def test_reused_control_id_is_stored_and_counted_and_a_resend_is_not(self):
        first = make_message("REUSE001", send_app="CTRAPP", send_fac="CTRFAC")
        other = first.replace(b"DOE^JANE", b"ROE^RICHARD")
        restamped = first.replace(b"|20260301120000||ADT", b"|20260301121500+0100||ADT", 1)
        self.assertNotEqual(restamped, first)
        with self.daemon.connect() as c:
            a = c.request(first)
            b = c.request(other)
            again = c.request(first)      # byte-identical re-send
            stamped = c.request(restamped)  # re-sent with a new MSH-7
        for ack in (a, b, again, stamped):
            self.assertEqual((ack.code, ack.control_id_text), ("AA", "REUSE001"))
        self.assertNotIn("Duplicate", a.text)
        self.assertNotIn("Duplicate", b.text)
        self.assertIn("Duplicate", again.text)
        self.assertIn("Duplicate", stamped.text)
        self.assertEqual(self.daemon.count_control_id("REUSE001", "CTRAPP", "CTRFAC"), 2)
        self.assertEqual(self.daemon.raw_messages("REUSE001"), [first, other])
        self.assertRegex(self.daemon.log(), r"level=warn event=control_id_reused listener=it "
                                            r'control_id="REUSE001" id=\d+')
        wait_for(lambda: "\nhl7bridge_control_id_reused_total 1\n" in self.daemon.get("/metrics")[2],
                 "hl7bridge_control_id_reused_total 1")
        self.assertIn("\nhl7bridge_store_duplicates_total 2\n", self.daemon.get("/metrics")[2])
        self.assertEqual(self.daemon.status()["store"]["control_id_reused"], 1)
        r = subprocess.run([str(binary_path()), "stats", "-c", str(self.daemon.config_path)],
                           cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"duplicates 2, failures 0, control ids reused 1")

    def test_reused_control_id_through_send_and_mllp_send(self):
        f1 = self.daemon.dir / "one.hl7"
        f2 = self.daemon.dir / "two.hl7"
        msg = make_message("REUSE002", send_app="CTRAPP", send_fac="CTRFAC")
        f1.write_bytes(msg)
        f2.write_bytes(msg.replace(b"MRN123", b"MRN999"))
        r = subprocess.run([str(binary_path()), "send", self.daemon.address, str(f1), str(f2),
                            str(f1)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = r.stdout.decode()
        self.assertEqual(out.count("MSA|AA|REUSE002|Message accepted"), 2, out)
        self.assertEqual(out.count("MSA|AA|REUSE002|Duplicate message"), 1, out)
        # Debian's mllp_send: both once more, re-sends now, and a third content.
        third = msg.replace(b"MRN123", b"MRN777")
        acks = [Ack(a) for a in mllp_send(self, self.daemon, [f1.read_bytes(), f2.read_bytes(), third])]
        self.assertEqual([(a.code, a.control_id_text) for a in acks], [("AA", "REUSE002")] * 3)
        self.assertEqual(["Duplicate" in a.text for a in acks], [True, True, False])
        self.assertEqual(self.daemon.count_control_id("REUSE002"), 3)
        wait_for(lambda: self.daemon.status()["store"]["control_id_reused"] == 2,
                 "control_id_reused 2 in /status")


class ControlIdReusedOnPostgreSQL(OnPostgreSQL, ControlIdReused):
    """The same on store.type postgresql."""


if __name__ == "__main__":
    unittest.main()
