"""MLLP behaviour of the daemon: duplicates, pipelining, framing edge cases,
size and connection limits, idle timeout."""

import re
import socket
import urllib.request
import threading
import time
import unittest

from harness import (CR, EB, SB, Daemon, DaemonTestCase, MLLPConnection, OnPostgreSQL, frame,
                     free_port, make_message)


class Duplicates(DaemonTestCase):

    def test_resent_message_gets_the_same_ack_and_is_stored_once(self):
        msg = make_message("DUP0001", send_app="DUPAPP", send_fac="DUPFAC")
        with self.daemon.connect() as c:
            first = c.request(msg)
        with self.daemon.connect() as c:  # the engine reconnected and re-sent
            second = c.request(msg)
        self.assertEqual((first.code, first.control_id_text), ("AA", "DUP0001"))
        self.assertEqual((second.code, second.control_id_text), ("AA", "DUP0001"))
        self.assertEqual(self.daemon.count_control_id("DUP0001"), 1)
        self.assertEqual(self.daemon.count_control_id("DUP0001", "DUPAPP", "DUPFAC"), 1)

    def test_resent_rejected_message_gets_the_same_rejection_and_is_not_stored(self):
        msg = make_message("DUPBAD1", version="9.9")
        with self.daemon.connect() as c:
            first = c.request(msg)
            second = c.request(msg)
        self.assertEqual((first.code, first.err_code), ("AR", "203"), first.raw)
        self.assertEqual(second.code, first.code)
        self.assertEqual(second.err_code, first.err_code)
        self.assertEqual(self.daemon.count_control_id("DUPBAD1"), 0)

    def test_same_control_id_from_another_facility_is_stored_separately(self):
        with self.daemon.connect() as c:
            a = c.request(make_message("SAME0001", send_app="APP", send_fac="NORTH"))
            b = c.request(make_message("SAME0001", send_app="APP", send_fac="SOUTH"))
            d = c.request(make_message("SAME0001", send_app="OTHERAPP", send_fac="NORTH"))
        for ack in (a, b, d):
            self.assertEqual((ack.code, ack.control_id_text), ("AA", "SAME0001"))
        self.assertEqual(self.daemon.count_control_id("SAME0001"), 3)
        self.assertEqual(self.daemon.count_control_id("SAME0001", "APP", "NORTH"), 1)
        self.assertEqual(self.daemon.count_control_id("SAME0001", "APP", "SOUTH"), 1)
        self.assertEqual(self.daemon.count_control_id("SAME0001", "OTHERAPP", "NORTH"), 1)

    def test_duplicate_is_recognised_after_a_restart(self):
        msg = make_message("DUPRST1")
        with self.daemon.connect() as c:
            self.assertEqual(c.request(msg).code, "AA")
        self.daemon.assert_stops_cleanly()
        self.daemon.start()
        with self.daemon.connect() as c:
            again = c.request(msg)
        self.assertEqual((again.code, again.control_id_text), ("AA", "DUPRST1"))
        self.assertEqual(self.daemon.count_control_id("DUPRST1"), 1)

    def test_duplicate_inside_one_pipelined_burst_is_stored_once(self):
        msg = make_message("DUPBURST")
        with self.daemon.connect() as c:
            c.send_raw(frame(msg) * 5)
            acks = [c.recv_ack() for _ in range(5)]
        self.assertEqual([(a.code, a.control_id_text) for a in acks], [("AA", "DUPBURST")] * 5)
        self.assertEqual(self.daemon.count_control_id("DUPBURST"), 1)


class DuplicatesOnPostgreSQL(OnPostgreSQL, Duplicates):
    """The same on store.type postgresql."""


class Pipelining(DaemonTestCase):

    def test_fifty_frames_in_one_write_get_fifty_acks_in_order(self):
        ids = [f"PIPE{i:04d}" for i in range(50)]
        payload = b"".join(frame(make_message(i)) for i in ids)
        with self.daemon.connect() as c:
            c.sock.sendall(payload)  # one buffer; the kernel may still split it
            acks = [c.recv_ack() for _ in ids]
            self.assertFalse(c.buf.strip(), "no extra ACK bytes")
        self.assertEqual([a.control_id_text for a in acks], ids)
        self.assertEqual({a.code for a in acks}, {"AA"})
        for i in ids:
            self.assertEqual(self.daemon.count_control_id(i), 1, i)

    def test_good_and_bad_frames_pipelined_keep_their_order(self):
        plan = [("MIX1", "2.5"), ("MIX2", "9.9"), ("MIX3", "2.5"), ("MIX4", "1.0"), ("MIX5", "2.3")]
        payload = b"".join(frame(make_message(i, version=v)) for i, v in plan)
        payload += frame(b"this is not HL7")
        with self.daemon.connect() as c:
            c.send_raw(payload)
            acks = [c.recv_ack() for _ in range(len(plan) + 1)]
        self.assertEqual([a.control_id_text for a in acks[:-1]], [i for i, _ in plan])
        self.assertEqual([a.code for a in acks[:-1]], ["AA", "AR", "AA", "AR", "AA"])
        self.assertEqual(acks[-1].code, "AR")

    def test_two_thousand_pipelined_frames_all_acked_in_order(self):
        n = 2000
        ids = [f"BULK{i:06d}" for i in range(n)]
        payload = b"".join(frame(make_message(i)) for i in ids)
        with self.daemon.connect(timeout=30) as c:
            # Write from another thread so neither side's buffers can deadlock.
            t = threading.Thread(target=c.sock.sendall, args=(payload,), daemon=True)
            t.start()
            acks = [c.recv_ack(timeout=30) for _ in ids]
            t.join(30)
        self.assertEqual([a.control_id_text for a in acks], ids)
        self.assertEqual({a.code for a in acks}, {"AA"})
        rows = self.daemon.query("SELECT COUNT(*) FROM messages WHERE control_id LIKE 'BULK%'")
        self.assertEqual(rows[0][0], n)

    def test_frame_delivered_one_byte_at_a_time(self):
        data = frame(make_message("BYTE0001"))
        with self.daemon.connect() as c:
            for i in range(len(data)):
                c.sock.send(data[i:i + 1])
                if i % 8 == 0:
                    time.sleep(0.001)
            ack = c.recv_ack()
        self.assertEqual((ack.code, ack.control_id_text), ("AA", "BYTE0001"))

    def test_end_marker_split_across_writes(self):
        data = frame(make_message("SPLITEND"))
        with self.daemon.connect() as c:
            c.sock.send(data[:-1])  # ... 0x1C
            time.sleep(0.2)
            self.assertEqual(c.buf, b"")
            c.sock.send(data[-1:])  # 0x0D
            ack = c.recv_ack()
        self.assertEqual((ack.code, ack.control_id_text), ("AA", "SPLITEND"))

    def test_garbage_and_line_ends_between_frames_are_skipped(self):
        payload = (b"\r\n" + frame(make_message("GARB0001")) + b"\r\n\n\r"
                   + b"some garbage \x00\xff\x1c\r" + frame(make_message("GARB0002"))
                   + b"\n\n" + b"MSH|^~\\&|not framed|\r" + frame(make_message("GARB0003")) + b"\r\n")
        with self.daemon.connect() as c:
            c.send_raw(payload)
            acks = [c.recv_ack() for _ in range(3)]
            # Nothing else comes back for the garbage.
            c.send(make_message("GARB0004"))
            last = c.recv_ack()
        self.assertEqual([(a.code, a.control_id_text) for a in acks],
                         [("AA", "GARB0001"), ("AA", "GARB0002"), ("AA", "GARB0003")])
        self.assertEqual((last.code, last.control_id_text), ("AA", "GARB0004"))

    def test_abandoned_frame_restarted_by_a_new_start_byte(self):
        # A sender that gave up mid-frame and started over: the half frame is
        # dropped, the new one answered.
        half = SB + make_message("HALF0001")[:40]
        with self.daemon.connect() as c:
            c.send_raw(half + frame(make_message("FULL0001")))
            ack = c.recv_ack()
            c.send(make_message("FULL0002"))
            ack2 = c.recv_ack()
        self.assertEqual((ack.code, ack.control_id_text), ("AA", "FULL0001"))
        self.assertEqual((ack2.code, ack2.control_id_text), ("AA", "FULL0002"))
        self.assertEqual(self.daemon.count_control_id("HALF0001"), 0)

    def test_bom_before_msh_is_skipped(self):
        with self.daemon.connect() as c:
            ack = c.request(b"\xef\xbb\xbf" + make_message("BOM00001"))
        self.assertEqual((ack.code, ack.control_id_text), ("AA", "BOM00001"))
        raw = self.daemon.query("SELECT raw FROM messages WHERE control_id = 'BOM00001'")
        self.assertTrue(bytes(raw[0][0]).startswith(b"MSH|"), raw)


class SenderThatDoesNotRead(DaemonTestCase):
    """A sender that pipelines faster than it reads its ACKs is paused (the
    listener stops reading it while its replies wait), never cut off: every
    frame still gets its ACK, in order, once it reads."""

    N = 12000

    def test_large_pipelined_write_while_not_reading_then_reading_everything(self):
        # Long MSH-3/MSH-4, echoed in each ACK: the unread replies outgrow any
        # fixed write buffer long before the sender has sent everything.
        app, fac = "A" * 1000, "F" * 1000
        ids = [f"SLOW{i:06d}" for i in range(self.N)]
        payload = b"".join(frame(make_message(i, send_app=app, send_fac=fac)) for i in ids)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.settimeout(120)  # hang guard
        sock.connect(("127.0.0.1", self.daemon.port))
        sent, failed = [0], []

        def writer():
            view = memoryview(payload)
            try:
                while sent[0] < len(payload):
                    sent[0] += sock.send(view[sent[0]:sent[0] + 65536])
            except OSError as e:
                failed.append(e)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        # Not reading: until the writer is done or has been stuck for 2 s.
        last, last_change = -1, time.monotonic()
        deadline = time.monotonic() + 120
        while t.is_alive() and time.monotonic() - last_change < 2:
            self.assertLess(time.monotonic(), deadline)
            if sent[0] != last:
                last, last_change = sent[0], time.monotonic()
            time.sleep(0.05)
        stalled_at = sent[0]
        # Now read everything.
        data = bytearray()
        count = 0
        while count < self.N:
            self.assertLess(time.monotonic(), deadline, f"{count} of {self.N} ACKs")
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            count += chunk.count(b"\x1c\r")
            data += chunk
        t.join(60)
        self.assertEqual(failed, [], "the writer was cut off")
        self.assertEqual(sent[0], len(payload))
        self.assertLess(stalled_at, len(payload), "the sender was never paused")
        acks = re.findall(rb"\rMSA\|([A-Z]{2})\|([^|\r]*)", bytes(data))
        self.assertEqual(len(acks), self.N, f"{len(acks)} ACKs of {self.N}")
        self.assertEqual([a[1].decode() for a in acks], ids)
        self.assertEqual({a[0] for a in acks}, {b"AA"})
        self.assertNotIn("mllp_reply_overflow", self.daemon.log())
        rows = self.daemon.query("SELECT COUNT(*) FROM messages WHERE control_id LIKE 'SLOW%'")
        self.assertEqual(rows[0][0], self.N)


class BackPressure(DaemonTestCase):
    """Many connections with full windows against a slowed writer: the
    listener stops reading instead of queueing past the store's queue (or
    answering AE "cannot store"); memory stays bounded; every frame is
    answered AA, in order.  The writer is slowed the way another process
    slows it in production: it holds the database's write lock, here for
    0.3 s at a time (under the writer's 1 s busy timeout)."""

    CONNS = 48
    WINDOW = 256  # the listener's frames in flight per connection
    RSS_LIMIT_MB = 400

    def rss_mb(self):
        with open(f"/proc/{self.daemon.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
        return 0

    def test_full_windows_against_a_slowed_writer(self):
        import sqlite3
        stop = threading.Event()
        holds = [0]

        def locker():
            con = sqlite3.connect(str(self.daemon.db_path), timeout=10, isolation_level=None)
            try:
                while not stop.is_set():
                    con.execute("BEGIN IMMEDIATE")
                    holds[0] += 1
                    stop.wait(0.3)
                    con.execute("COMMIT")
                    time.sleep(0.05)
            finally:
                con.close()

        results, errors = {}, []

        def sender(n):
            ids = [f"BP{n:02d}-{i:04d}" for i in range(self.WINDOW)]
            try:
                with MLLPConnection(self.daemon.port, timeout=60) as c:
                    c.send_raw(b"".join(frame(make_message(i)) for i in ids))
                    acks = [c.recv_ack() for _ in ids]
                results[n] = (ids, acks)
            except Exception as e:  # recorded and asserted below
                errors.append(f"{n}: {e!r}")

        lt = threading.Thread(target=locker, daemon=True)
        lt.start()
        self.addCleanup(stop.set)
        while holds[0] == 0:
            time.sleep(0.01)
        rss0 = self.rss_mb()
        senders = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(self.CONNS)]
        for t in senders:
            t.start()
        peak = rss0
        deadline = time.monotonic() + 120
        while any(t.is_alive() for t in senders):
            self.assertLess(time.monotonic(), deadline, "hang")
            peak = max(peak, self.rss_mb())
            time.sleep(0.05)
        stop.set()
        lt.join(10)
        self.assertEqual(errors, [])
        for n, (ids, acks) in results.items():
            self.assertEqual([a.control_id_text for a in acks], ids, f"connection {n}: order")
            bad = [a for a in acks if a.code != "AA"]
            self.assertEqual(bad, [], f"connection {n}: {len(bad)} not AA, first {bad[:1]}")
        self.assertEqual(len(results), self.CONNS)
        total = self.daemon.query("SELECT COUNT(*) FROM messages WHERE control_id LIKE 'BP%'")[0][0]
        self.assertEqual(total, self.CONNS * self.WINDOW)
        self.assertGreater(holds[0], 1, "the writer was never held")
        self.assertLess(peak, self.RSS_LIMIT_MB, f"RSS grew from {rss0} to {peak} MiB")


class InputBudget(unittest.TestCase):
    """limits.max_buffered_mb: one budget for the input all connections hold.
    Unfinished frames that together pass it are not all kept: connections
    wait, and the one holding a large unfinished frame gets AR 207 and is
    closed; a well-behaved sender still gets its AA."""

    HOGS = 3
    HOG_BYTES = 700 * 1024

    def test_unfinished_frames_over_the_budget_get_ar_207(self):
        d = Daemon(self)
        text = d.config_text
        mport = free_port()
        d.config_text = lambda port: text(port).replace(
            "log:\n", "limits:\n  max_buffered_mb: 1\nlog:\n").replace(
            "metrics:\n  enabled: false\n", f"metrics:\n  address: 127.0.0.1:{mport}\n  enabled: true\n")
        port = d.start()
        self.assertIn("max_buffered_mb: 1", d.config_path.read_text())
        hogs = []
        for i in range(self.HOGS):
            c = MLLPConnection(port, timeout=20)
            self.addCleanup(c.close)
            start = SB + make_message(f"HOG{i}")[:-1] + b"\rNTE|1||" + b"X" * self.HOG_BYTES
            # From a thread: the daemon may stop reading this connection.
            t = threading.Thread(target=lambda c=c, b=start: _send_quietly(c.sock, b), daemon=True)
            t.start()
            hogs.append(c)
        refused = []
        for i, c in enumerate(hogs):
            try:
                ack = c.recv_ack(timeout=5)
            except socket.timeout:
                continue  # still held: within the budget
            except ConnectionError:
                self.fail(f"HOG{i} closed without an answer")
            self.assertEqual((ack.code, ack.err_code), ("AR", "207"), ack.raw)
            self.assertEqual(ack.control_id, f"HOG{i}".encode(), ack.raw)
            self.assertTrue(c.closed_by_peer(10), f"HOG{i} not closed after its AR")
            refused.append(i)
        self.assertGreaterEqual(len(refused), 1, f"no unfinished frame refused\n{d.log()}")
        self.assertLess(len(refused), self.HOGS, "a frame that fits was refused")
        self.assertEqual(d.log().count("event=mllp_input_budget"), len(refused))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        self.assertIn(f'hl7bridge_frames_rejected_total{{reason="input_budget"}} {len(refused)}\n',
                      metrics)
        with MLLPConnection(port) as c:
            ack = c.request(make_message("AFTERHOGS"))
            self.assertEqual(ack.code, "AA", ack.raw)
        for c in hogs:
            c.close()
        self.assertEqual(d.stop(), 0)


def _send_quietly(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass


class Oversize(DaemonTestCase):
    DAEMON_OPTS = {"max_message_bytes": 4096}

    def test_frame_over_max_message_bytes_gets_ar_and_the_connection_is_closed(self):
        other = self.daemon.connect()
        self.assertEqual(other.request(make_message("OTHER001")).code, "AA")
        big = make_message("BIG00001", pad=10000)
        self.assertGreater(len(big), 4096)
        with self.daemon.connect() as c:
            c.send(big)
            ack = c.recv_ack()
            self.assertEqual(ack.code, "AR", ack.raw)
            self.assertEqual(ack.control_id_text, "BIG00001", "the AR echoes MSH-10")
            self.assertEqual(ack.err_code, "207", ack.raw)
            self.assertTrue(c.closed_by_peer(5), "connection closed after the oversize frame")
        # Other connections are not affected, old or new.
        self.assertEqual(other.request(make_message("OTHER002")).code, "AA")
        with self.daemon.connect() as c:
            self.assertEqual(c.request(make_message("NEW00001")).code, "AA")
        self.assertEqual(self.daemon.count_control_id("BIG00001"), 0)

    def test_frame_just_under_the_limit_is_accepted(self):
        msg = make_message("EDGE0001", pad=1)
        msg = make_message("EDGE0001", pad=4096 - len(msg) - 8)
        self.assertLessEqual(len(msg), 4096)
        with self.daemon.connect() as c:
            ack = c.request(msg)
        self.assertEqual((ack.code, ack.control_id_text), ("AA", "EDGE0001"))

    def test_unterminated_stream_over_the_limit_is_cut_off(self):
        with self.daemon.connect() as c:
            c.send_raw(SB + make_message("ENDLESS1", pad=20000))  # no end marker, ever
            ack = c.recv_ack()
            self.assertEqual((ack.code, ack.err_code), ("AR", "207"), ack.raw)
            self.assertTrue(c.closed_by_peer(5))
        self.assertAlive()


class ConnectionLimits(DaemonTestCase):
    DAEMON_OPTS = {"max_connections": 3, "idle_timeout_s": 2}

    def test_fourth_connection_is_closed_at_once(self):
        conns = [self.daemon.connect() for _ in range(3)]
        for i, c in enumerate(conns):
            self.assertEqual(c.request(make_message(f"LIM{i}")).code, "AA")
        fourth = self.daemon.connect()
        t0 = time.monotonic()
        self.assertTrue(fourth.closed_by_peer(1.5), "4th connection is closed by the server")
        self.assertLess(time.monotonic() - t0, 1.5)
        for i, c in enumerate(conns):
            ack = c.request(make_message(f"LIMB{i}"))
            self.assertEqual((ack.code, ack.control_id_text), ("AA", f"LIMB{i}"))
        # A freed place can be taken again.
        conns[0].close()
        deadline = time.monotonic() + 3
        while True:
            c = MLLPConnection(self.daemon.port, timeout=2)
            self.addCleanup(c.close)
            try:
                ack = c.request(make_message("LIMAGAIN"), timeout=2)
                break
            except (ConnectionError, socket.timeout, OSError):
                c.close()
                if time.monotonic() > deadline:
                    self.fail("no connection accepted after one of the three closed")
                time.sleep(0.1)
        self.assertEqual(ack.code, "AA")

    def test_idle_connection_is_closed_after_idle_timeout(self):
        c = self.daemon.connect()
        self.assertEqual(c.request(make_message("IDLE0001")).code, "AA")
        t0 = time.monotonic()
        self.assertTrue(c.closed_by_peer(6), "idle connection still open after 6 s")
        elapsed = time.monotonic() - t0
        self.assertGreaterEqual(elapsed, 1.5, "closed too early for idle_timeout_s: 2")
        self.assertLessEqual(elapsed, 4.5)

    def test_active_connection_is_not_closed(self):
        c = self.daemon.connect()
        for i in range(5):  # 5 x 0.9 s > 2 s idle timeout
            ack = c.request(make_message(f"ACTIVE{i}"))
            self.assertEqual(ack.code, "AA")
            time.sleep(0.9)
        self.assertEqual(c.request(make_message("ACTIVE9")).code, "AA")


if __name__ == "__main__":
    unittest.main()
