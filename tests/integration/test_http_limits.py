"""The monitoring port under slow clients: each request has a whole deadline
(a client that trickles one byte at a time is closed, however steady its
trickle), and /healthz keeps answering while more slow clients than the
per-address limit hold connections from the same address."""

import socket
import threading
import time
import unittest
import urllib.error
import urllib.request

from harness import require_binary
from test_metrics import MetricsDaemon

SLOW_CLIENTS = 20          # more than the per-address limit (16)
TRICKLE_S = 0.5            # one byte this often: well inside the idle timeout
DEADLINE_GUARD_S = 40      # hang guard; the daemon's deadline is 10 s


class SlowClients:
    """`n` connections to the metrics port, each sending a request line one
    byte every TRICKLE_S; a connection the daemon closes is opened again,
    so the pressure stays until stop()."""

    REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4096

    def __init__(self, port, n):
        self.port, self.n = port, n
        self.stop_ev = threading.Event()
        self.closed_by_server = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _open(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.settimeout(5)
        return s

    def _run(self):
        s, sent = None, 0
        while not self.stop_ev.is_set():
            try:
                if s is None:
                    s, sent = self._open(), 0
                s.sendall(self.REQUEST[sent % len(self.REQUEST):][:1])
                sent += 1
            except OSError:
                with self.lock:
                    self.closed_by_server += 1
                if s:
                    s.close()
                s = None
            self.stop_ev.wait(TRICKLE_S)
        if s:
            s.close()

    def start(self):
        for t in self.threads:
            t.start()
            time.sleep(0.01)

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=10)


class SlowHttpClients(unittest.TestCase):

    def setUp(self):
        require_binary(self)
        self.daemon = MetricsDaemon(self)
        self.daemon.start()

    def healthz(self):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.daemon.metrics_base + "/healthz", timeout=10) as r:
                return r.status, r.read()
        except (urllib.error.URLError, OSError) as e:
            return None, repr(e)

    def test_healthz_answers_while_slow_clients_hold_connections(self):
        slow = SlowClients(self.daemon.mport, SLOW_CLIENTS)
        self.addCleanup(slow.stop)
        slow.start()
        time.sleep(2 * TRICKLE_S)   # every slow client connected and trickling
        answers = [self.healthz() for _ in range(10)]
        self.assertEqual(answers, [(200, b"ok\n")] * 10)
        # The slow clients were really there: the daemon made room by
        # closing some of them.
        self.assertGreater(slow.closed_by_server, 0)
        self.daemon.assert_stops_cleanly()

    def test_trickling_request_is_closed_at_its_deadline(self):
        s = socket.create_connection(("127.0.0.1", self.daemon.mport), timeout=5)
        self.addCleanup(s.close)
        start = time.monotonic()
        req = SlowClients.REQUEST
        closed = False
        for i in range(int(DEADLINE_GUARD_S / TRICKLE_S)):
            try:
                s.sendall(req[i:i + 1])
                s.settimeout(TRICKLE_S)
                data = s.recv(4096)
                if data == b"":
                    closed = True
                    break
                self.fail(f"answer to an unfinished request: {data[:80]!r}")
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        self.assertTrue(closed, f"still open after {time.monotonic() - start:.0f} s of trickling")
        self.assertEqual(self.healthz(), (200, b"ok\n"))
        self.daemon.assert_stops_cleanly()


if __name__ == "__main__":
    unittest.main()
