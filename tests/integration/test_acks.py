"""Answers every real sender and client understands (issue: ACKs), and a
reused control id that is not a re-send: the MLLP frame end (strict and
lenient), long runs of start bytes, batch ACKs that say what was stored,
MSH-9 without a trigger, unusual delimiters, MSA-2 recovered for every
answer, NUL bytes, batch delimiters, MSH-11 echo, enhanced mode in `send`,
and duplicates recognised by content.  Messages are the project's own,
sent with Debian's `mllp_send` (python3-hl7), npm's node-hl7-client and
`hl7bridge send`."""

import shutil
import socket
import subprocess
import time
import unittest

from harness import (CR, EB, SB, DaemonTestCase, MLLPConnection, binary_path, frame,
                     make_message)


def mllp_send_path():
    return shutil.which("mllp_send") or "/usr/bin/mllp_send"


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


if __name__ == "__main__":
    unittest.main()
