"""Abuse on loopback, bounded in count and time: 2,000 concurrent
connections against a limit, slow-loris peers, random bytes, oversize
frames and half-closed sockets — while a well-behaved client keeps getting
its ACKs with bounded latency, and the daemon stays up."""

import os
import resource
import socket
import threading
import time
import unittest

from harness import DaemonTestCase, MLLPConnection, frame, make_message
from test_tls import TLSDaemon, wait_log

LATENCY_BOUND_S = 1.0


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


class GoodClient(threading.Thread):
    """Sends one message every 20 ms on its own connection and records the
    worst ACK latency and any failure, until stopped."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.conn = MLLPConnection(port)
        self.stop_flag = threading.Event()
        self.worst = 0.0
        self.count = 0
        self.error = None

    def run(self):
        try:
            while not self.stop_flag.is_set():
                t0 = time.monotonic()
                ack = self.conn.request(make_message(f"GOOD{self.count:06d}"), timeout=5)
                dt = time.monotonic() - t0
                if ack.code != "AA":
                    raise AssertionError(f"good client got {ack!r}")
                self.worst = max(self.worst, dt)
                self.count += 1
                time.sleep(0.02)
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            self.conn.close()

    def finish(self, tc):
        self.stop_flag.set()
        self.join(10)
        tc.assertIsNone(self.error, f"well-behaved client failed: {self.error}")
        tc.assertGreater(self.count, 5, "well-behaved client made no progress")
        tc.assertLess(self.worst, LATENCY_BOUND_S, f"worst ACK latency {self.worst:.3f}s")


class Abuse(DaemonTestCase):
    def start(self, extra, **opts):
        self.daemon = TLSDaemon(self, extra, **opts)
        self.port = self.daemon.start()

    def test_two_thousand_connections_over_the_limit(self):
        if raise_nofile(2300) < 2300:
            self.skipTest("cannot raise the open-file limit to 2,300")
        self.start(["    max_connections_per_ip: 0"], max_connections=1000)
        good = GoodClient(self.port)
        good.start()
        socks = []
        try:
            for _ in range(2000):
                s = socket.socket()
                s.settimeout(5)
                s.connect(("127.0.0.1", self.port))
                socks.append(s)
            # The server closes each connection over the limit at once.
            deadline = time.monotonic() + 10
            refused = 0
            pending = list(socks)
            while pending and time.monotonic() < deadline:
                still = []
                for s in pending:
                    s.settimeout(0.0)
                    try:
                        if s.recv(1) == b"":
                            refused += 1
                            continue
                    except BlockingIOError:
                        pass
                    except (ConnectionResetError, OSError):
                        refused += 1
                        continue
                    still.append(s)
                pending = still
                if refused >= 1001:
                    break
                time.sleep(0.1)
            # 1000 places, one taken by the good client.
            self.assertGreaterEqual(refused, 1000, "connections over the limit must be closed")
            self.assertLessEqual(refused, 1002)
            self.assertTrue(wait_log(self.daemon, "reason=max_connections"))
            # Hold the listener full for a while: the well-behaved client
            # must keep being answered meanwhile.
            before = good.count
            time.sleep(1.5)
            self.assertGreater(good.count - before, 10, "well-behaved client stalled")
        finally:
            for s in socks:
                s.close()
        good.finish(self)
        self.assertAlive()
        # Places come back once the flood is gone.
        time.sleep(0.5)
        with MLLPConnection(self.port) as c:
            self.assertEqual(c.request(make_message("AFTERFLOOD")).code, "AA")

    def test_slow_loris_random_bytes_oversize_and_half_close(self):
        self.start(["    frame_timeout_s: 2", "    max_connections_per_ip: 0"],
                   max_message_bytes=65536, idle_timeout_s=3)
        good = GoodClient(self.port)
        good.start()
        stop = threading.Event()
        errors = []

        def slow_loris():
            try:
                with MLLPConnection(self.port) as c:
                    msg = frame(make_message("LORIS"))
                    for b in msg:
                        if stop.is_set():
                            return
                        c.send_raw(bytes([b]))
                        time.sleep(0.25)
            except OSError:
                return  # closed by the server: what we want

        def random_bytes():
            with MLLPConnection(self.port) as c:
                try:
                    for _ in range(16):
                        c.send_raw(os.urandom(65536))
                except OSError:
                    pass

        def oversize():
            with MLLPConnection(self.port) as c:
                try:
                    c.send_raw(b"\x0b" + make_message("BIG1") + b"X" * 200000)
                    ack = c.recv_ack(timeout=5)
                    if ack.code != "AR":
                        errors.append(f"oversize got {ack!r}")
                except OSError:
                    pass

        threads = [threading.Thread(target=slow_loris, daemon=True) for _ in range(30)]
        threads += [threading.Thread(target=random_bytes, daemon=True) for _ in range(4)]
        threads += [threading.Thread(target=oversize, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        # Half-closed: send, shut down our side, still get the ACK.
        for i in range(5):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(frame(make_message(f"HALF{i}")))
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            s.close()
            self.assertIn(f"MSA|AA|HALF{i}".encode(), buf, buf)
        time.sleep(4)  # long enough for the frame timeout to cut the slow peers
        stop.set()
        for t in threads:
            t.join(10)
        self.assertEqual(errors, [])
        self.assertIn("event=mllp_frame_timeout", self.daemon.log())
        self.assertIn("event=mllp_frame_oversize", self.daemon.log())
        good.finish(self)
        self.assertAlive()
        self.assertEqual(self.daemon.count_control_id("LORIS"), 0)
        for i in range(5):
            self.assertEqual(self.daemon.count_control_id(f"HALF{i}"), 1)


if __name__ == "__main__":
    unittest.main()
