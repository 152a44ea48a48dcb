"""store.type postgresql: each connector row delivered once cluster-wide.

Two nodes on one throwaway PostgreSQL server (pgserver.py, one server for
this module), both with the audit sink pointed at the strict connector
emulator (emulator.py).  A node claims a block with a lease it renews while
sending; the emulator holds one block ("hang") at node A; node B starts
meanwhile (its start-up recovery must leave A's block alone) and delivers
the load sent through both while A keeps renewing; A is killed with
SIGKILL, its lease runs out and B delivers the held block.  Every stored
row reaches the emulator exactly once (the held upload was never accepted,
so here not even the documented in-flight duplicate occurs).
"""

import os
import re
import subprocess
import threading
import time
import unittest
from collections import Counter

import harness
import pgserver
from test_audit_sink import AuditDaemon, AuditSinkBase, messages, send_all

SERVER = None
PW_ENV = "HB_TEST_PG_PASSWORD"
LEASE_S = 3          # short, so the take-over comes within seconds


def setUpModule():
    global SERVER
    SERVER = pgserver.start_or_skip()
    os.environ.setdefault(PW_ENV, pgserver.PASSWORD)  # `hl7bridge map` loads the same config


def tearDownModule():
    if SERVER is not None:
        SERVER.close()


class PgAuditDaemon(AuditDaemon):
    """An AuditDaemon whose store is the module's PostgreSQL database."""

    def __init__(self, testcase, audit, db, node, **kw):
        super().__init__(testcase, audit, **kw)
        self.pg_db, self.node = db, node
        self.env = {PW_ENV: pgserver.PASSWORD}

    def config_text(self, port):
        text = super().config_text(port)
        text = text.replace("store:\n", "store:\n  type: postgresql\n"
                            f"  url: {harness._yaml_str(SERVER.url(self.pg_db))}\n"
                            f"  password: ${{{PW_ENV}}}\n", 1)
        text = re.sub(r"  sms:\n    type: file\n    path: [^\n]*\n", "  sms:\n    type: none\n",
                      text)
        return f"node:\n  name: {self.node}\n" + text


def q(sql, db):
    return SERVER.psql(sql, db)


def unlock():
    """Ends the test's row-locking session (hb-locker), if any."""
    q("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
      " WHERE application_name = 'hb-locker'", "postgres")


def lease_left_s(db, batch_id):
    """Seconds until the lease of `batch_id` runs out (server clock)."""
    (left,), = q(f"SELECT (lease_until - (extract(epoch FROM clock_timestamp()) * 1000)::bigint)"
                 f" / 1000.0 FROM batches WHERE id = {batch_id}", db)
    return float(left)


def wait_for(pred, timeout, what, db=None, *nodes):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    why = ""
    if db:
        why += "\nbatches: " + repr(q("SELECT id, state, owner, row_count, attempts, resends,"
                                      " last_error FROM batches WHERE state <> 'done'", db))
        why += "\nfailed blocks: " + repr(q(
            "SELECT b.id, b.node, b.first_row_id, b.last_row_id, (SELECT COUNT(*) FROM rows r"
            " WHERE r.batch_id = b.id) FROM batches b WHERE state = 'failed'", db))
        why += "\nunbatched rows: " + repr(q("SELECT COUNT(*) FROM rows WHERE batch_id IS NULL",
                                             db))
    for d in nodes:
        why += f"\n--- {d.node} log (end) ---\n" + d.log()[-3000:]
    raise AssertionError(f"timed out waiting for {what}{why}")


class TwoNodesDeliverOnce(AuditSinkBase):
    def test_dead_nodes_block_delivered_by_the_survivor(self):
        db = SERVER.create_db("hbdeliver")
        port = harness.free_port()
        audit = self.purview(port, batch={"max_rows": 40, "max_bytes": "64MiB", "max_age_s": 1},
                             max_parallel_uploads=1, lease_s=LEASE_S, timeout_s=120)
        a = PgAuditDaemon(self, audit, db, "node-a")
        emu = self.emulator(a.header_line(), port=port)
        self.addCleanup(emu.release.set)           # the held request ends with the test
        emu.upload_faults = ["hang"]               # A's first upload is never answered
        b = PgAuditDaemon(self, audit, db, "node-b")
        a.start()
        self.assertEqual(send_all(a.port, messages(200), conns=4), 200)
        self.assertTrue(emu.hanging.wait(30), "no upload reached the emulator\n" + a.log()[-2000:])
        t_held = time.monotonic()
        held = q("SELECT id, owner, row_count FROM batches WHERE state = 'uploading'", db)
        self.assertEqual(len(held), 1, held)
        held_id, owner, held_rows = held[0][0], held[0][1], int(held[0][2])
        self.assertEqual(owner, "node-a")

        # B starts while A holds the block (its recovery must not take it),
        # then load through both nodes at once.
        b.start()
        sent = [200]

        def load(d, start):
            sent.append(send_all(d.port, messages(200, start), conns=4))

        ts = [threading.Thread(target=load, args=(d, s)) for d, s in ((a, 1000), (b, 2000))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        self.assertEqual(sum(sent), 600, "every message answered AA")

        def others_done():
            (n,), = q("SELECT COUNT(*) FROM rows WHERE batch_id IS NULL", db)
            (open_,), = q(f"SELECT COUNT(*) FROM batches WHERE state <> 'done' AND id <> {held_id}",
                          db)
            return int(n) == 0 and int(open_) == 0

        wait_for(others_done, 60, "every other block delivered", db, a, b)
        # Well past one lease since A claimed it: A renews, so it is still A's
        # (neither B's start-up recovery nor B's claims took it).
        time.sleep(max(0.0, t_held + 1.5 * LEASE_S - time.monotonic()))
        self.assertEqual(q(f"SELECT state, owner FROM batches WHERE id = {held_id}", db),
                         [["uploading", "node-a"]], "a block changed hands while its node lived")
        (stored_rows,), = q("SELECT COUNT(*) FROM rows", db)
        self.assertEqual(emu.accepted_count(), int(stored_rows) - held_rows)

        # A dies mid-upload; its sender fails over to B.  Meanwhile another
        # claimer holds the row lock of A's block (as a node claiming it at
        # that moment would): B skips it and goes on with newer blocks.
        a.kill()
        locker = subprocess.Popen(
            ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(SERVER.port), "-U",
             pgserver.SUPERUSER, "-d", db, "-c",
             f"BEGIN; SELECT id FROM batches WHERE id = {held_id} FOR UPDATE;"
             " SELECT pg_sleep(120); COMMIT;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, PGPASSWORD=pgserver.PASSWORD, PGAPPNAME="hb-locker"))
        self.addCleanup(locker.wait, 30)
        self.addCleanup(unlock)
        wait_for(lambda: q("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name ="
                           " 'hb-locker' AND wait_event = 'PgSleep'", db) == [["1"]],
                 30, "the row lock taken")
        time.sleep(max(0.0, lease_left_s(db, held_id) + 0.5))   # A's lease ran out
        self.assertEqual(send_all(b.port, messages(100, 3000), conns=2), 100)
        wait_for(others_done, 60, "B's new blocks delivered beside a locked one", db, b)
        # B takes the block over once the lock is gone.
        unlock()
        wait_for(lambda: int(q("SELECT COUNT(*) FROM batches WHERE state <> 'done'", db)[0][0])
                 == 0 and int(q("SELECT COUNT(*) FROM rows WHERE batch_id IS NULL", db)[0][0])
                 == 0, 60, "the held block delivered by node B", db, b)
        (state, owner, resends, attempts), = q(
            f"SELECT state, owner, resends, attempts FROM batches WHERE id = {held_id}", db)
        self.assertEqual((state, owner, resends, attempts), ("done", "node-b", "1", "2"))
        self.assertIn("event=audit_block_taken_over", b.log())

        # Every stored row (every AA'd message's) arrived exactly once.
        stored = [bytes.fromhex(r[0]).decode().removesuffix("\r")
                  for r in q("SELECT encode(data, 'hex') FROM rows ORDER BY id", db)]
        (msgs,), = q("SELECT COUNT(*) FROM messages", db)
        self.assertEqual(int(msgs), 700)
        got = emu.accepted_rows()
        self.assertEqual(emu.violations, [])
        self.assertEqual(len(got), len(stored))
        self.assertEqual(Counter(got), Counter(stored))
        self.assertEqual(len({r.split("\t")[5] for r in got}), 700)
        (undelivered,), = q("SELECT COUNT(*) FROM messages WHERE delivered_ms IS NULL", db)
        self.assertEqual(int(undelivered), 0)
        b.assert_stops_cleanly()


if __name__ == "__main__":
    unittest.main()
