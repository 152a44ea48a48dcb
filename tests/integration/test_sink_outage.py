"""A connector outage of several minutes: messages keep coming and are
accepted (store-and-forward); the uploader keeps retrying at its capped
backoff; when the connector is back, every row arrives exactly once.

The outage lasts HL7BRIDGE_OUTAGE_S seconds (default 180)."""

import os
import time
import unittest

from test_audit_sink import AuditSinkBase, messages, send_all

OUTAGE_S = float(os.environ.get("HL7BRIDGE_OUTAGE_S", "180"))


class LongOutage(AuditSinkBase):
    def test_outage_of_several_minutes_loses_nothing(self):
        emu, d = self.start_pair()
        # The outage starts once the daemon holds a token (a fixed sleep lost
        # that race on a loaded machine: the token response was cut off, so
        # no block was ever tried and no block retry was logged).
        t_end = time.monotonic() + 60
        while "event=audit_token " not in d.log() and time.monotonic() < t_end:
            time.sleep(0.05)
        self.assertIn("event=audit_token ", d.log())
        emu.stop()
        sent, t0, k = 0, time.monotonic(), 0
        while time.monotonic() - t0 < OUTAGE_S:
            batch = 500
            self.assertEqual(send_all(d.port, messages(batch, 300000 + sent)), batch)
            sent += batch
            k += 1
            time.sleep(min(10.0, OUTAGE_S / 10))
        (done,), = d.query("SELECT COUNT(*) FROM batches WHERE state = 'done'")
        self.assertEqual(done, 0, "nothing can have been delivered during the outage")
        self.assertIn("event=audit_block_retry", d.log())
        emu.start()                          # same port
        emu.server.handle_error = lambda *a: None
        self.assertTrue(d.wait_all_done(90), f"{d.batch_states()}\n{d.log()[-3000:]}")
        self.assert_exactly_once(emu, d, sent)
        self.assertEqual(d.stop(), 0)

if __name__ == "__main__":
    unittest.main()
