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

from harness import (CR, EB, SB, ROOT, Ack, DaemonTestCase, MLLPConnection, binary_path, frame,
                     make_message)
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
        raws = sorted(r[0] for r in self.daemon.query(
            "SELECT raw FROM messages WHERE control_id = 'REUSE001'"))
        self.assertEqual(raws, sorted([first, other]))
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


if __name__ == "__main__":
    unittest.main()
