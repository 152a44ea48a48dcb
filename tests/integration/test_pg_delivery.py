"""store.type postgresql: each connector row delivered once cluster-wide,
and each appointment text sent once cluster-wide.

Two nodes on one throwaway PostgreSQL server (pgserver.shared(), one for
the test process), both with the audit sink pointed at the strict connector
emulator (emulator.py).  A node claims a block with a lease it renews while
sending; the emulator holds one block ("hang") at node A; node B starts
meanwhile (its start-up recovery must leave A's block alone) and delivers
the load sent through both while A keeps renewing; A is killed with
SIGKILL, its lease runs out and B delivers the held block.  Every stored
row reaches the emulator exactly once (the held upload was never accepted,
so here not even the documented in-flight duplicate occurs).

Node killed mid-load: senders (pipelined, python-hl7's client one message
at a time, and one holding a committed window whose ACKs it never reads)
load node A; the connector has accepted one of A's blocks without
answering when A is killed with SIGKILL; each sender reconnects to B and
re-sends what it had no ACK for.  Every message is AA'd and stored once
(B answers A's commits as duplicates), every row reaches the connector
once, and twice only as a whole block A had in flight at the crash (the
held one, delivered again by B once A's lease ran out).

SMS (TwoNodesTextOnce): both nodes run the SMS sink against the strict ACS
emulator (acs_emulator.py).  Bookings sent through both nodes are texted
once each; then the emulator holds one text's answer at whichever node
claimed it, that node is killed with SIGKILL, and the survivor sends the
held text again after its lease — with the same repeatability id and
first-sent date, so the emulator does not deliver it twice — and sends the
reminders that fell due while the node was dead, once.

Clean stop (CleanStopHandsOver, CleanStopHandsOverText): a node stopped
with SIGTERM while the connector (or ACS) holds its upload (text) hands it
back at once; the other node sends it although the lease is ten minutes.
"""

import os
import re
import subprocess
import threading
import time
import unittest
from collections import Counter

import hl7.client

import harness
import pgserver
from test_audit_sink import AuditDaemon, AuditSinkBase, messages, send_all
from test_sms import SMSBase, SMSDaemon, siu

SERVER = None
PW_ENV = pgserver.PASSWORD_ENV     # set by pgserver.shared(): `hl7bridge map` finds it too
LEASE_S = 3          # short, so the take-over comes within seconds
SMS_LEASE_S = 3
REMINDER_IN_S = 6    # the test's reminders fall due this long after booking


def setUpModule():
    global SERVER
    SERVER = pgserver.shared()


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


class PgDeliveryBase(AuditSinkBase):
    def node_a(self, db, parallel, fault):
        """(audit settings, node A not started, the emulator) with blocks of
        40 rows, a short lease, and A's first upload held as `fault`."""
        port = harness.free_port()
        audit = self.purview(port, batch={"max_rows": 40, "max_bytes": "64MiB", "max_age_s": 1},
                             max_parallel_uploads=parallel, lease_s=LEASE_S, timeout_s=120)
        a = PgAuditDaemon(self, audit, db, "node-a")
        emu = self.emulator(a.header_line(), port=port)
        self.addCleanup(emu.release.set)           # the held request ends with the test
        emu.upload_faults = [fault]
        return audit, a, emu


class TwoNodesDeliverOnce(PgDeliveryBase):
    def test_dead_nodes_block_delivered_by_the_survivor(self):
        db = SERVER.create_db("hbdeliver")
        audit, a, emu = self.node_a(db, 1, "hang")  # A's first upload is never answered
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


class Sender:
    """An interface engine's outbound connection: sends its messages in
    order to its node and, when the connection dies, connects to the other
    node and sends again every message it has no ACK for (the commits the
    dead node made but could not acknowledge come back as duplicates).

    kind "window": harness.MLLPConnection, `window` frames in flight;
    kind "hl7": python-hl7's MLLPClient, one message at a time;
    kind "stall": like "window", but once (at message `stall_at`) it sends
    a window and reads none of its ACKs until the node is killed, then drops
    the connection unread: a window the node committed whose ACKs the engine
    never saw."""

    def __init__(self, name, msgs, ports, kind, window=16, stall_at=None):
        self.name, self.msgs, self.ports, self.kind = name, msgs, ports, kind
        self.window, self.stall_at = window, stall_at
        self.ids = [harness.expected_control_id(m).decode() for m in msgs]
        self.acked = 0                 # msgs[:acked] are answered AA
        self.limit = len(msgs)         # how many it sends in all (cut after a fail-over)
        self.sent = 0                  # msgs[:sent] went out at least once
        self.node = 0                  # index into ports
        self.failovers = 0
        self.resent = []               # sent to the dead node, no ACK: sent again
        self.errors = []
        self.stalled = None            # the stalled window's control ids
        self.stall_ready = threading.Event()
        self.killed = None             # set by the test when the node is dead

    def _ack(self, raw):
        ack = harness.Ack(raw)
        want = self.ids[self.acked]
        if (ack.code, ack.control_id_text) != ("AA", want):
            raise AssertionError(f"{want}: {ack.code} {ack.control_id_text} {ack.text}")
        self.acked += 1

    def _window_conn(self, port):
        c = harness.MLLPConnection(port, timeout=30)
        try:
            while self.acked < self.limit:
                chunk = self.msgs[self.acked:min(self.acked + self.window, self.limit)]
                self.sent = max(self.sent, self.acked + len(chunk))
                c.send_raw(b"".join(harness.frame(m) for m in chunk))
                if self.kind == "stall" and self.stalled is None and \
                        self.acked >= self.stall_at:
                    self.stalled = self.ids[self.acked:self.acked + len(chunk)]
                    self.stall_ready.set()
                    self.killed.wait(120)
                    return      # the connection dropped with every ACK unread
                for _ in chunk:
                    self._ack(c.recv_frame())
        finally:
            c.close()

    def _hl7_conn(self, port):
        with hl7.client.MLLPClient("127.0.0.1", port) as c:
            c.socket.settimeout(30)
            while self.acked < self.limit:
                self.sent = max(self.sent, self.acked + 1)
                raw = c.send_message(self.msgs[self.acked])
                while raw and not raw.endswith(harness.EB + harness.CR):
                    more = c.socket.recv(65536)
                    if not more:
                        break
                    raw += more
                if not raw.endswith(harness.EB + harness.CR):
                    raise ConnectionError("connection closed before the ACK")
                self._ack(raw[raw.index(harness.SB) + 1:-2])

    def run(self):
        try:
            while self.acked < self.limit:
                try:
                    if self.kind == "hl7":
                        self._hl7_conn(self.ports[self.node])
                    else:
                        self._window_conn(self.ports[self.node])
                except OSError:
                    pass        # refused, reset or closed: fail over below
                if self.acked < self.limit:
                    if self.node == 1:
                        raise AssertionError(f"{self.name}: the surviving node failed too")
                    self.node = 1
                    self.failovers += 1
                    self.resent = self.ids[self.acked:self.sent]
                    # what it had no ACK for, then a few new ones on the survivor
                    self.limit = min(len(self.msgs), self.sent + 30)
        except Exception as e:  # reported by the test
            self.errors.append(f"{self.name}: {e!r}")


class NodeKilledMidLoad(PgDeliveryBase):
    def test_kill9_mid_load_senders_fail_over_to_the_other_node(self):
        """Five senders load node A (two pipelined, two python-hl7 clients
        waiting for each ACK, one that holds a committed window unread);
        the connector has just accepted one of A's blocks but not answered
        when A is killed with SIGKILL in the middle of the load.  Every
        sender fails over to B and re-sends what it had no ACK for.  Then:
        every message AA, stored exactly once (the re-sent ones A had
        committed are B's duplicates of A's originals); every stored row at
        the connector, once — twice only for a block that was in flight at
        A at the crash, and then the whole block; the held block delivered
        again by B after A's lease ran out."""
        db = SERVER.create_db("hbfailover")
        # A's first block: received by the connector, never answered
        audit, a, emu = self.node_a(db, 2, "accept-hang")
        b = PgAuditDaemon(self, audit, db, "node-b")
        a.start()
        ports = [a.port, None]
        killed = threading.Event()
        kinds = ["window", "hl7", "window", "hl7", "stall"]
        senders = [Sender(f"s{i}", messages(3000, 10000 * (i + 1)), ports, k, stall_at=120)
                   for i, k in enumerate(kinds)]
        for s in senders:
            s.killed = killed
        threads = [threading.Thread(target=s.run) for s in senders]
        self.addCleanup(killed.set)
        for t in threads:
            t.start()

        stall = senders[-1]
        self.assertTrue(stall.stall_ready.wait(90), "the stalled window was never sent")
        in_list = ", ".join(f"'{c}'" for c in stall.stalled)
        wait_for(lambda: q(f"SELECT COUNT(*) FROM messages WHERE control_id IN ({in_list})", db)
                 == [[str(len(stall.stalled))]], 60, "the unread window committed by A", db, a)
        self.assertTrue(emu.hanging.wait(60), "no block of A reached the connector\n" +
                        a.log()[-2000:])
        # B joins now (so the held upload is A's), under load.
        ports[1] = b.start()
        # Mid-load: the other senders are still going on A.
        self.assertTrue(all(s.acked < s.limit for s in senders), [s.acked for s in senders])
        a.kill()
        in_flight = {int(r[0]) for r in q("SELECT id FROM batches WHERE state = 'uploading'"
                                          " AND owner = 'node-a'", db)}
        killed.set()
        emu.release.set()
        for t in threads:
            t.join(180)
        self.assertEqual([e for s in senders for e in s.errors], [])
        self.assertEqual([s.failovers for s in senders], [1] * len(senders))
        self.assertTrue(in_flight, "A had no block in flight at the crash")
        self.assertEqual(stall.resent, stall.stalled)

        def all_done():
            (n,), = q("SELECT COUNT(*) FROM rows WHERE batch_id IS NULL", db)
            (open_,), = q("SELECT COUNT(*) FROM batches WHERE state <> 'done'", db)
            return int(n) == 0 and int(open_) == 0

        wait_for(all_done, 90, "every block delivered by node B", db, b)

        # Stored exactly once: every message AA'd (each sender got an AA for
        # all of them, in order), each control id once in the journal.
        self.assertEqual([s.acked for s in senders], [s.limit for s in senders])
        sent = [c for s in senders for c in s.ids[:s.acked]]
        counts = {r[0]: int(r[1]) for r in q("SELECT control_id, COUNT(*) FROM messages"
                                              " GROUP BY 1", db)}
        self.assertEqual(sorted(counts), sorted(sent))
        self.assertEqual({c: n for c, n in counts.items() if n != 1}, {})
        # The unread window went to A's journal; its re-send to B was
        # answered from A's originals.
        self.assertEqual(q(f"SELECT DISTINCT node, dup_count FROM messages"
                           f" WHERE control_id IN ({in_list})", db), [["node-a", "1"]])

        # Delivered once, except whole blocks in flight at A at the crash.
        stored = {}
        for data, batch, cid in q("SELECT encode(r.data, 'hex'), r.batch_id, m.control_id"
                                  " FROM rows r JOIN messages m ON m.id = r.msg_id", db):
            stored[bytes.fromhex(data).decode().removesuffix("\r")] = (int(batch), cid)
        got = Counter(emu.accepted_rows())
        self.assertEqual(emu.violations, [])
        self.assertEqual(set(got) - set(stored), set(), "rows nobody stored")
        self.assertEqual(set(stored) - set(got), set(), "stored rows never delivered")
        self.assertEqual({cid for _, cid in stored.values()}, set(sent))
        twice = {row for row, n in got.items() if n > 1}
        self.assertEqual({got[row] for row in twice} - {2}, set(), "a row sent three times")
        dup_blocks = {stored[row][0] for row in twice}
        self.assertLessEqual(dup_blocks, in_flight, "a duplicate outside the crash window")
        for blk in dup_blocks:
            rows_of = [row for row, (bb, _) in stored.items() if bb == blk]
            self.assertEqual({got[row] for row in rows_of}, {2}, f"block {blk} partly twice")
        # The block the connector held: accepted from A, delivered again by B.
        held = {stored[row][0] for row in emu.held_rows}
        self.assertEqual(len(held), 1)
        held_id = held.pop()
        self.assertIn(held_id, in_flight)
        self.assertIn(held_id, dup_blocks)
        (state, owner, resends), = q(f"SELECT state, owner, resends FROM batches"
                                     f" WHERE id = {held_id}", db)
        self.assertEqual((state, owner, int(resends) >= 1), ("done", "node-b", True))
        self.assertIn("event=audit_block_taken_over", b.log())
        (undelivered,), = q("SELECT COUNT(*) FROM messages WHERE delivered_ms IS NULL", db)
        self.assertEqual(int(undelivered), 0)
        b.assert_stops_cleanly()



class PgSMSDaemon(SMSDaemon):
    """An SMSDaemon whose store is the module's PostgreSQL database (no
    audit sink: rows stay in the store)."""

    def __init__(self, testcase, sms_lines, db, node):
        super().__init__(testcase, sms_lines)
        self.pg_db, self.node = db, node
        self.env = {PW_ENV: pgserver.PASSWORD}
        self.retention = None      # store.retention, e.g. "{sms: 1s}"

    def config_text(self, port):
        text = super().config_text(port)
        text = text.replace("store:\n", "store:\n  type: postgresql\n"
                            f"  url: {harness._yaml_str(SERVER.url(self.pg_db))}\n"
                            f"  password: ${{{PW_ENV}}}\n"
                            + (f"  retention: {self.retention}\n" if self.retention else ""), 1)
        text = re.sub(r"  audit:\n    type: file\n    directory: [^\n]*\n",
                      "  audit:\n    type: none\n", text)
        return f"node:\n  name: {self.node}\n" + text


class TwoNodesTextOnce(SMSBase):
    def texts(self, db):
        """{appt_id/kind: (state, owner, attempts, request_id, lease_until)}"""
        return {f"{r[0]}/{r[1]}": (r[2], r[3], int(r[4]), r[5], int(r[6])) for r in q(
            "SELECT appt_id, kind, state, COALESCE(owner, ''), attempts, request_id,"
            " COALESCE(lease_until, 0) FROM sms_outbox", db)}

    def test_each_text_once_and_a_dead_nodes_text_resent_by_the_survivor(self):
        db = SERVER.create_db("hbsms")
        emu = self.emulator()
        lines = self.acs_lines(emu.port, ["reminders: [1h]", f"lease_s: {SMS_LEASE_S}"])
        a = PgSMSDaemon(self, lines, db, "node-a")
        b = PgSMSDaemon(self, lines, db, "node-b")
        a.start()
        b.start()
        nodes = {"node-a": a, "node-b": b}

        def wait(pred, what, timeout=60):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if pred():
                    return
                time.sleep(0.1)
            raise AssertionError(f"timed out waiting for {what}\n{self.texts(db)}\n"
                                 + "\n".join(f"--- {n} ---\n{d.log()[-3000:]}"
                                             for n, d in nodes.items()))

        # 1. Bookings through both nodes at once (reminders far ahead):
        # each confirmation goes out once, whichever node sends it.
        far = time.time() + 2 * 86400
        ts = [threading.Thread(target=self.send, args=(d, *[siu("S12", f"{n}{i}", far)
                                                             for i in range(6)]))
              for n, d in (("A", a), ("B", b))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        wait(lambda: len(emu.delivered()) >= 12, "12 confirmations")
        self.assertEqual(len(emu.delivered()), 12)

        # 2. The emulator holds the next text's answer (it is delivered);
        # its node is killed while it waits; the reminders of these
        # bookings fall due after that.
        emu.fail_next("hold", 0)
        soon = time.time() + 3600 + REMINDER_IN_S
        self.send(a, siu("S12", "H1", soon), siu("S12", "H2", soon))
        self.send(b, siu("S12", "H3", soon))
        self.assertTrue(emu.holding.wait(30), "no text reached the emulator")
        held = [(k, v) for k, v in self.texts(db).items() if v[3] == emu.held[0]]
        self.assertEqual(len(held), 1, held)
        held_key, (state, holder, attempts, held_rid, lease_until) = held[0]
        self.assertEqual((state, attempts), ("pending", 1))
        nodes[holder].kill()
        survivor = nodes["node-b" if holder == "node-a" else "node-a"]

        def all_sent():
            t = self.texts(db)
            return len(t) == 12 * 2 + 3 * 2 and all(
                v[0] == "sent" for k, v in t.items() if k[0] == "H" or k.endswith("/scheduled"))
        wait(all_sent, "the held text and every H reminder sent by the survivor")
        time.sleep(0.5)   # a second send would have come with the same step

        texts = self.texts(db)
        reqs = [rid for st, rid in emu.requests]
        got = emu.delivered()
        self.assertNoProtocolErrors(emu)
        # the held text: tried twice, with one id, delivered once, resent by
        # the survivor no earlier than the dead node's lease ran out
        self.assertEqual(reqs.count(held_rid), 2, reqs)
        self.assertEqual([g["request_id"] for g in got].count(held_rid), 1)
        self.assertEqual(texts[held_key][:3], ("sent", survivor.node, 2))
        second = [t for t in emu.request_times if t[1] == held_rid][1][0]
        self.assertGreaterEqual(second, lease_until / 1000 - 0.05,
                                "a text changed hands before its lease ran out")
        self.assertIn("event=sms_text_taken_over", survivor.log())
        # every other text: requested once, delivered once
        others = [v[3] for k, v in texts.items() if v[0] == "sent" and v[3] != held_rid]
        self.assertEqual(len(others), 12 + 3 + 3 - 1)
        for rid in others:
            self.assertEqual(reqs.count(rid), 1, rid)
        self.assertEqual(len(got), len(others) + 1)
        self.assertEqual(len({g["request_id"] for g in got}), len(got))
        # the reminders that fell due while the node was dead: the survivor's
        for k in ("H1/reminder", "H2/reminder", "H3/reminder"):
            self.assertEqual(texts[k][:2], ("sent", survivor.node), k)
        # counted once: every fact applied by one node, every text by one
        counts = {r[0]: int(r[1]) for r in q(
            "SELECT name, SUM(n) FROM sms_counters GROUP BY name", db)}
        self.assertEqual(counts.get("messages"), 15, counts)
        self.assertEqual(counts.get("sent"), len(got), counts)
        self.assertEqual(q("SELECT COUNT(*) FROM appt_facts", db), [["0"]])

        # 3. A cancellation: its text goes, the reminder is dropped, and once
        # nothing is pending the appointment's personal fields are purged.
        self.send(survivor, siu("S15", "A0", far))
        wait(lambda: q("SELECT purged, phone IS NULL AND first_name IS NULL FROM"
                       " sms_appointments WHERE appt_id = 'A0'", db) == [["1", "t"]],
             "the cancelled appointment's personal fields purged")
        self.assertEqual(q("SELECT kind, state, text IS NULL AND to_e164 IS NULL FROM sms_outbox"
                           " WHERE appt_id = 'A0' ORDER BY id", db),
                         [["scheduled", "sent", "t"], ["cancelled", "sent", "t"]])
        survivor.assert_stops_cleanly()

        # 4. store.retention.sms: finished texts go; pending ones stay.
        (pending,), = q("SELECT COUNT(*) FROM sms_outbox WHERE state = 'pending'", db)
        self.assertEqual(int(pending), 11)     # the far reminders, A0's dropped
        survivor.retention = "{sms: 1s}"
        survivor.start()
        wait(lambda: q("SELECT COUNT(*) FROM sms_outbox WHERE state <> 'pending'", db)
             == [["0"]], "finished texts purged under store.retention.sms")
        self.assertEqual(q("SELECT COUNT(*) FROM sms_outbox", db), [[pending]])
        survivor.assert_stops_cleanly()


if __name__ == "__main__":
    unittest.main()


class CleanStopHandsOver(PgDeliveryBase):
    """A node stopped cleanly (SIGTERM: maintenance, a rolling upgrade)
    hands what it had in flight to the cluster at once.  The lease is ten
    minutes here, so the survivor can only have sent the work within the
    hang guard because the stopping node released it."""

    def test_stopped_nodes_block_sent_by_the_other_node_without_waiting_for_the_lease(self):
        db = SERVER.create_db("hbhandover")
        port = harness.free_port()
        audit = self.purview(port, batch={"max_rows": 40, "max_bytes": "64MiB", "max_age_s": 1},
                             max_parallel_uploads=1, lease_s=600, timeout_s=120)
        a = PgAuditDaemon(self, audit, db, "node-a")
        emu = self.emulator(a.header_line(), port=port)
        self.addCleanup(emu.release.set)
        emu.upload_faults = ["hang"]               # A's first upload is never answered
        b = PgAuditDaemon(self, audit, db, "node-b")
        a.start()
        b.start()
        self.assertEqual(send_all(a.port, messages(40), conns=2), 40)
        self.assertTrue(emu.hanging.wait(30), "no upload reached the emulator\n" + a.log()[-2000:])
        held = q("SELECT id, owner FROM batches WHERE state = 'uploading'", db)
        self.assertEqual(len(held), 1, held)
        nodes = {"node-a": a, "node-b": b}
        holder = nodes.pop(held[0][1])            # either node may have claimed it
        (other_name, other), = nodes.items()
        self.assertEqual(holder.stop(), 0, holder.log()[-3000:])
        self.assertIn("event=audit_blocks_released blocks=1", holder.log())
        wait_for(lambda: q(f"SELECT state, owner, resends FROM batches WHERE id = {held[0][0]}",
                           db) == [["done", other_name, "1"]],
                 60, "the stopped node's block sent by the other node", db, other)
        self.assertEqual(emu.accepted_count(), 40)
        self.assertEqual(emu.violations, [])
        other.assert_stops_cleanly()


class CleanStopHandsOverText(SMSBase):
    def test_stopped_nodes_text_sent_by_the_other_node_without_waiting_for_the_lease(self):
        db = SERVER.create_db("hbsmsstop")
        emu = self.emulator()
        lines = self.acs_lines(emu.port, ["lease_s: 600"])
        a = PgSMSDaemon(self, lines, db, "node-a")
        b = PgSMSDaemon(self, lines, db, "node-b")
        emu.fail_next("hold", 0)                   # delivered, the answer held
        a.start()
        self.send(a, siu("S12", "T1", time.time() + 2 * 86400))
        self.assertTrue(emu.holding.wait(30), "no text reached the emulator\n" + a.log()[-2000:])
        rid = emu.held[0]
        self.assertEqual(q("SELECT owner, state FROM sms_outbox WHERE request_id = "
                           f"'{rid}'", db), [["node-a", "pending"]])
        b.start()
        self.assertEqual(a.stop(), 0, a.log()[-3000:])
        self.assertIn("event=sms_texts_released texts=1", a.log())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and q(
                f"SELECT state FROM sms_outbox WHERE request_id = '{rid}'", db) != [["sent"]]:
            time.sleep(0.1)
        self.assertEqual(q(f"SELECT owner, state, attempts FROM sms_outbox WHERE request_id ="
                           f" '{rid}'", db), [["node-b", "sent", "2"]], b.log()[-3000:])
        # the same repeatability id twice, delivered once
        self.assertEqual([r for _, r in emu.requests].count(rid), 2)
        self.assertEqual([g["request_id"] for g in emu.delivered()].count(rid), 1)
        self.assertNoProtocolErrors(emu)
        b.assert_stops_cleanly()
