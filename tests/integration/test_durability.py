"""No acknowledged message is ever lost: kill -9 during a run, SIGTERM while
clients are mid-stream, and the project's load generator."""

import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import unittest
from pathlib import Path

from harness import (Daemon, DaemonTestCase, MLLPConnection, OnPostgreSQL, frame, loadgen_path,
                     make_message)


class Sender:
    """Streams messages on several connections, `window` frames in flight
    on each, and records every control id that got an AA.  Stops on its own
    when the server goes away."""

    def __init__(self, port, prefix, conns=4, per_conn=2500, window=16):
        self.port, self.prefix = port, prefix
        self.conns, self.per_conn, self.window = conns, per_conn, window
        self.lock = threading.Lock()
        self.acked = []          # control ids answered AA
        self.not_aa = []         # (control id, code)
        self.sent = set()        # control ids written to a socket
        self.errors = []
        self.threads = []
        self.stop_flag = threading.Event()

    def ids(self, conn):
        return [f"{self.prefix}{conn:02d}{i:07d}" for i in range(self.per_conn)]

    def acked_count(self):
        with self.lock:
            return len(self.acked)

    def _run(self, conn):
        ids = self.ids(conn)
        try:
            c = MLLPConnection(self.port, timeout=15)
        except OSError as e:
            self.errors.append(repr(e))
            return
        try:
            pos = 0
            while pos < len(ids) and not self.stop_flag.is_set():
                chunk = ids[pos:pos + self.window]
                with self.lock:
                    self.sent.update(chunk)
                c.send_raw(b"".join(frame(make_message(i, send_app="DURAPP")) for i in chunk))
                for expected in chunk:
                    ack = c.recv_ack()
                    if ack.control_id_text != expected:
                        raise AssertionError(f"ACK for {ack.control_id_text}, expected {expected}")
                    with self.lock:
                        if ack.code == "AA":
                            self.acked.append(expected)
                        else:
                            self.not_aa.append((expected, ack.code))
                pos += len(chunk)
        except (ConnectionError, OSError) as e:  # the daemon went away
            self.errors.append(repr(e))
        except AssertionError as e:
            self.errors.append("PROTOCOL: " + str(e))
        finally:
            c.close()

    def start(self):
        for i in range(self.conns):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def wait_acked(self, n, timeout):
        deadline = time.monotonic() + timeout
        while self.acked_count() < n:
            if time.monotonic() > deadline or not any(t.is_alive() for t in self.threads):
                return False
            time.sleep(0.002)
        return True


class KillDashNine(DaemonTestCase):

    def test_kill_9_mid_run_loses_no_acknowledged_message(self):
        total = 10000
        s = Sender(self.daemon.port, "K", conns=4, per_conn=total // 4, window=16)
        s.start()
        self.addCleanup(s.stop_flag.set)
        self.assertTrue(s.wait_acked(3000, timeout=60),
                        f"only {s.acked_count()} ACKs; errors={s.errors[:3]}\n{self.daemon.log()[-2000:]}")
        rc = self.daemon.kill()
        self.assertEqual(rc, -9)
        self.assertTrue(s.join(20), "sender threads did not notice the kill")
        acked = list(s.acked)
        self.assertFalse([e for e in s.errors if e.startswith("PROTOCOL")], s.errors)
        self.assertEqual(s.not_aa, [])
        self.assertGreaterEqual(len(acked), 3000)
        self.assertLess(len(acked), total, "the kill happened before the run ended")
        self.assertEqual(len(set(acked)), len(acked))

        # Restart on the same store: every AA'd control id is there, once.
        self.daemon.start()
        counts = self.daemon.control_id_counts()
        missing = [i for i in acked if counts.get(i.encode(), 0) == 0]
        doubled = [i for i in acked if counts.get(i.encode(), 0) > 1]
        self.assertEqual(missing, [], f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}")
        self.assertEqual(doubled, [])
        # Nothing was stored that was never sent.
        stored = {k.decode() for k in counts if k and k.startswith(b"K")}
        self.assertLessEqual(stored, s.sent)

        # The engine re-sends what it did not see acknowledged: afterwards the
        # store holds all 10,000 exactly once.
        unacked = sorted(s.sent - set(acked))
        resend = unacked + acked[:100]  # plus a few the engine did see
        with self.daemon.connect(timeout=30) as c:
            for i in range(0, len(resend), 64):
                chunk = resend[i:i + 64]
                c.send_raw(b"".join(frame(make_message(x, send_app="DURAPP")) for x in chunk))
                for x in chunk:
                    ack = c.recv_ack(timeout=30)
                    self.assertEqual((ack.code, ack.control_id_text), ("AA", x))
        counts = self.daemon.control_id_counts()
        for x in sorted(s.sent):
            self.assertEqual(counts.get(x.encode(), 0), 1, x)
        self.daemon.assert_stops_cleanly()


class KillDashNineOnPostgreSQL(OnPostgreSQL, KillDashNine):
    """The same on store.type postgresql."""


class GracefulShutdown(DaemonTestCase):

    def test_sigterm_mid_stream_exits_0_and_keeps_every_acked_message(self):
        s = Sender(self.daemon.port, "T", conns=3, per_conn=20000, window=8)
        s.start()
        self.addCleanup(s.stop_flag.set)
        self.assertTrue(s.wait_acked(2000, timeout=60), f"errors={s.errors[:3]}")
        rc = self.daemon.stop()
        self.assertEqual(rc, 0, self.daemon.log()[-3000:])
        self.assertTrue(s.join(20))
        self.assertFalse([e for e in s.errors if e.startswith("PROTOCOL")], s.errors)
        acked = list(s.acked)
        self.assertLess(len(acked), 60000, "SIGTERM came before the run ended")
        self.assertRegex(self.daemon.log(), r"event=shutdown_begin")
        self.assertRegex(self.daemon.log(), r"event=stopped")
        # Read the store with the daemon stopped.
        counts = self.daemon.control_id_counts()
        missing = [i for i in acked if counts.get(i.encode(), 0) != 1]
        self.assertEqual(missing, [], f"{len(missing)} acknowledged messages not stored once")

    def test_sigterm_answers_frames_already_received(self):
        # A burst is written (on loopback it is in the daemon's socket once
        # sendall returns), then SIGTERM as soon as the first ACK is back:
        # every frame of the burst was in flight, so every one is committed
        # and answered, in order, before the connection closes; exit 0.
        ids = [f"DRAIN{i:04d}" for i in range(200)]
        c = self.daemon.connect(timeout=15)
        c.send_raw(b"".join(frame(make_message(i)) for i in ids))
        first = c.recv_ack()  # the daemon is processing the burst
        self.daemon.proc.send_signal(signal.SIGTERM)
        acks = [first]
        while True:
            try:
                acks.append(c.recv_ack(timeout=15))
            except ConnectionError:
                break
        rc = self.daemon.stop()
        self.assertEqual(rc, 0)
        self.assertEqual(len(acks), len(ids), f"{len(acks)} ACKs for {len(ids)} frames")
        self.assertEqual([a.control_id_text for a in acks], ids, "in order, no gaps")
        self.assertEqual({a.code for a in acks}, {"AA"})
        counts = self.daemon.control_id_counts()
        for i in ids:
            self.assertEqual(counts.get(i.encode()), 1, i)

    def test_second_signal_exits_at_once_claiming_nothing_unanswered(self):
        # A sender that pipelines and does not read holds the drain open
        # (its ACKs cannot be written).  The second SIGTERM ends the drain
        # at once (the drain's own deadline is 30 s); whatever ACKs did get
        # out are for stored messages, and nothing after them was claimed.
        app = "A" * 1000
        ids = [f"HOLD{i:05d}" for i in range(12000)]
        payload = b"".join(frame(make_message(i, send_app=app, send_fac=app)) for i in ids)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        sock.settimeout(60)
        sock.connect(("127.0.0.1", self.daemon.port))
        sent = [0]

        def writer():
            view = memoryview(payload)
            try:
                while sent[0] < len(payload):
                    sent[0] += sock.send(view[sent[0]:sent[0] + 65536])
            except OSError:
                pass

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        # Until the daemon stops reading (its ACKs are not read): the writer
        # makes no progress for 2 s.
        last, last_change = -1, time.monotonic()
        deadline = time.monotonic() + 120
        while time.monotonic() - last_change < 2:
            self.assertLess(time.monotonic(), deadline)
            self.assertTrue(t.is_alive(), "everything was sent: the daemon never paused")
            if sent[0] != last:
                last, last_change = sent[0], time.monotonic()
            time.sleep(0.05)
        self.daemon.proc.send_signal(signal.SIGTERM)
        self.assertTrue(wait_for(lambda: "event=shutdown_begin" in self.daemon.log(), 10))
        time.sleep(0.3)
        self.assertTrue(self.daemon.alive(), "the drain should still be waiting for the reader")
        t0 = time.monotonic()
        self.daemon.proc.send_signal(signal.SIGTERM)
        rc = self.daemon.proc.wait(timeout=40)
        took = time.monotonic() - t0
        self.assertLess(took, 15, "the second signal did not cut the drain short")
        self.assertEqual(rc, 0, self.daemon.log()[-2000:])
        self.assertIn("event=shutdown_forced", self.daemon.log())
        data = bytearray()
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        acks = re.findall(rb"\rMSA\|([A-Z]{2})\|([^|\r]*)", bytes(data))
        self.assertLess(len(acks), len(ids), "every frame was answered: nothing was cut short")
        self.assertEqual([a[1].decode() for a in acks], ids[:len(acks)], "in order, no gaps")
        counts = self.daemon.control_id_counts()
        for code, cid in acks:
            self.assertEqual(code, b"AA")
            self.assertEqual(counts.get(cid), 1, cid)

    def test_no_new_connections_after_sigterm(self):
        port = self.daemon.port
        self.assertEqual(self.daemon.stop(), 0)
        with self.assertRaises(OSError):
            MLLPConnection(port, timeout=2).request(make_message("LATE0001"), timeout=2)


class GracefulShutdownOnPostgreSQL(OnPostgreSQL, GracefulShutdown):
    """The same on store.type postgresql."""


class LoadGenerator(DaemonTestCase):

    def test_loadgen_run_is_fully_acknowledged_and_stored(self):
        lg = loadgen_path()
        if not lg.is_file():
            self.fail(f"loadgen not found at {lg} (make build/bench/loadgen, or set LOADGEN_BIN)")
        tmp = Path(tempfile.mkdtemp(prefix="hl7bridge-it-loadgen-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        msg = tmp / "adt.hl7"
        msg.write_bytes(make_message("TEMPLATE0000000000000", send_app="LOADGEN", pad=300))
        n = 6000
        r = self.run_cmd([str(lg), "--addr", self.daemon.address, "--conns", "4", "--window", "8",
                          "--messages", str(n), "--file", str(msg)], timeout=120)
        out = r.stdout.decode()
        self.assertEqual(r.returncode, 0, out + r.stderr.decode())
        fig = dict(re.findall(r"(\w+)=([\d.]+)", out))
        self.assertEqual(int(fig["messages"]), n, out)
        self.assertEqual(int(fig["aa"]), n, out)
        self.assertEqual(int(fig["not_aa"]), 0, out)
        self.assertEqual(int(fig["errors"]), 0, out)
        rows = self.daemon.query("SELECT CAST(control_id AS TEXT) FROM messages WHERE send_app = 'LOADGEN'")
        ids = [r[0].decode() for r in rows]
        self.assertEqual(len(ids), n)
        self.assertEqual(len(set(ids)), n)
        # L, run tag, connection, sequence: 20 characters
        self.assertTrue(all(re.fullmatch(r"L[0-9a-f]{6}\d{3}\d{10}", i) for i in ids), ids[:3])
        # A second run against the same store is stored in full: its ids are
        # its own, so a benchmark never measures duplicate answers by mistake.
        r = self.run_cmd([str(lg), "--addr", self.daemon.address, "--conns", "4", "--window", "8",
                          "--messages", str(n), "--file", str(msg)], timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
        (stored,), = self.daemon.query("SELECT COUNT(*) FROM messages WHERE send_app = 'LOADGEN'")
        self.assertEqual(stored, 2 * n)


if __name__ == "__main__":
    unittest.main()


def _send_quietly(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass


def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False

