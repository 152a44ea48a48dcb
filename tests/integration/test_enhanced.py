"""ack.mode: enhanced — MSH-15 (accept acknowledgement type) decides whether a
commit ACK (CA/CE/CR) is sent."""

import socket
import unittest

from harness import DaemonTestCase, frame, make_message


class EnhancedMode(DaemonTestCase):
    DAEMON_OPTS = {"ack_mode": "enhanced"}

    def test_al_gets_ca(self):
        with self.daemon.connect() as c:
            ack = c.request(make_message("ENH_AL01", accept_ack="AL", app_ack="NE"))
        self.assertEqual((ack.code, ack.control_id_text), ("CA", "ENH_AL01"))
        self.assertEqual(self.daemon.count_control_id("ENH_AL01"), 1)

    def test_ne_gets_no_ack_and_the_next_message_still_gets_its_own(self):
        with self.daemon.connect() as c:
            c.send_raw(frame(make_message("ENH_NE01", accept_ack="NE"))
                       + frame(make_message("ENH_AL02", accept_ack="AL")))
            ack = c.recv_ack()
            self.assertEqual((ack.code, ack.control_id_text), ("CA", "ENH_AL02"))
            with self.assertRaises(socket.timeout):
                c.recv_frame(timeout=0.5)
        # Not acknowledged, but stored all the same.
        self.assertEqual(self.daemon.count_control_id("ENH_NE01"), 1)
        self.assertEqual(self.daemon.count_control_id("ENH_AL02"), 1)

    def test_ne_between_messages_keeps_the_order(self):
        plan = [("ORD1", "AL"), ("ORD2", "NE"), ("ORD3", "AL"), ("ORD4", "NE"), ("ORD5", "NE"),
                ("ORD6", "AL")]
        with self.daemon.connect() as c:
            c.send_raw(b"".join(frame(make_message(i, accept_ack=a)) for i, a in plan))
            acks = [c.recv_ack() for _ in range(3)]
            with self.assertRaises(socket.timeout):
                c.recv_frame(timeout=0.5)
        self.assertEqual([(a.code, a.control_id_text) for a in acks],
                         [("CA", "ORD1"), ("CA", "ORD3"), ("CA", "ORD6")])

    def test_er_gets_no_ack_on_success(self):
        with self.daemon.connect() as c:
            c.send(make_message("ENH_ER01", accept_ack="ER"))
            c.send(make_message("ENH_AL03", accept_ack="AL"))
            ack = c.recv_ack()
        self.assertEqual((ack.code, ack.control_id_text), ("CA", "ENH_AL03"))
        self.assertEqual(self.daemon.count_control_id("ENH_ER01"), 1)

    def test_er_gets_a_negative_commit_ack_on_error(self):
        with self.daemon.connect() as c:
            ack = c.request(make_message("ENH_ER02", accept_ack="ER", version="9.9"))
        self.assertIn(ack.code, ("CR", "CE"), ack.raw)
        self.assertEqual(ack.control_id_text, "ENH_ER02")
        self.assertEqual(ack.err_code, "203", ack.raw)
        self.assertEqual(self.daemon.count_control_id("ENH_ER02"), 0)

    def test_su_gets_ca_on_success(self):
        with self.daemon.connect() as c:
            ack = c.request(make_message("ENH_SU01", accept_ack="SU"))
        self.assertEqual((ack.code, ack.control_id_text), ("CA", "ENH_SU01"))

    def test_al_rejection_gets_cr(self):
        with self.daemon.connect() as c:
            ack = c.request(make_message("ENH_AL04", accept_ack="AL", version="1.0"))
        self.assertIn(ack.code, ("CR", "CE"), ack.raw)
        self.assertEqual(ack.control_id_text, "ENH_AL04")


class OriginalModeIgnoresMsh15(DaemonTestCase):

    def test_ne_still_gets_aa_in_original_mode(self):
        with self.daemon.connect() as c:
            ack = c.request(make_message("ORIG_NE1", accept_ack="NE", app_ack="NE"))
        self.assertEqual((ack.code, ack.control_id_text), ("AA", "ORIG_NE1"))


if __name__ == "__main__":
    unittest.main()
