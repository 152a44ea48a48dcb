"""Faults: kill -9 at random moments during a mixed load, 50 rounds, then
every AA'd message is in the store exactly once; a full disk (a small tmpfs
holds the store): AE instead of AA, no corruption, and recovery by itself
when space returns."""

import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

from harness import Daemon, MLLPConnection, make_message, frame
from test_tls import TLSDaemon


class Sender(threading.Thread):
    """Mixed load on several connections: new messages, re-sends of earlier
    ones (duplicates) and malformed frames; records every control id that
    got AA, until its connection breaks."""

    def __init__(self, port, tag, acked, lock, rng):
        super().__init__(daemon=True)
        self.port, self.tag, self.acked, self.lock, self.rng = port, tag, acked, lock, rng

    def run(self):
        n = 0
        try:
            with MLLPConnection(self.port, timeout=5) as c:
                while True:
                    r = self.rng.random()
                    if r < 0.1:
                        c.send_raw(frame(b"GARBAGE" + os.urandom(20).replace(b"\x1c", b"")))
                        c.recv_ack()
                        continue
                    if r < 0.25 and self.acked:
                        with self.lock:
                            cid = self.rng.choice(sorted(self.acked))
                    else:
                        n += 1
                        cid = f"{self.tag}-{n}"
                    ack = c.request(make_message(cid))
                    if ack.code == "AA":
                        with self.lock:
                            self.acked.add(cid)
        except (OSError, ConnectionError, AssertionError):
            return


class KillNine(unittest.TestCase):
    ROUNDS = 50

    def test_kill_9_at_random_moments_loses_no_acknowledged_message(self):
        rng = random.Random(20261123)
        d = Daemon(self)
        port = d.start()
        acked, lock = set(), threading.Lock()
        for rnd in range(self.ROUNDS):
            senders = [Sender(port, f"R{rnd}C{i}", acked, lock, rng) for i in range(4)]
            for s in senders:
                s.start()
            time.sleep(rng.uniform(0.02, 0.25))
            self.assertEqual(d.kill(), -9)
            for s in senders:
                s.join(10)
            d.start()  # same port, same store
        counts = d.control_id_counts()
        missing = [c for c in acked if counts.get(c.encode(), 0) != 1]
        self.assertEqual(missing, [], f"{len(missing)} AA'd messages not stored exactly once")
        self.assertGreater(len(acked), 200, "too little load to mean anything")
        ok = d.query("PRAGMA integrity_check")[0][0]
        self.assertEqual(ok, b"ok")
        self.assertEqual(d.stop(), 0)


class FullDisk(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("mounting a tmpfs needs root")
        self.mnt = tempfile.mkdtemp(prefix="hl7bridge-fulldisk-")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", self.mnt],
                           capture_output=True, timeout=20)
        if r.returncode != 0:
            os.rmdir(self.mnt)
            self.skipTest(f"cannot mount a tmpfs: {r.stderr.decode(errors='replace')}")
        self.addCleanup(self._unmount)

    def _unmount(self):
        subprocess.run(["umount", "-l", self.mnt], capture_output=True, timeout=20)
        shutil.rmtree(self.mnt, True)

    def test_full_disk_gives_ae_then_recovers(self):
        d = TLSDaemon(self, [], workdir=None)
        d.db_path = __import__("pathlib").Path(self.mnt) / "store" / "hl7bridge.db"
        text = d.config_text
        d.config_text = lambda port: text(port).replace("min_free_disk_mb: 0",
                                                        "min_free_disk_mb: 2")
        port = d.start()
        filler = os.path.join(self.mnt, "filler")
        acked, codes = [], []
        with MLLPConnection(port) as c:
            # Take most of the space, then send until the store says no.
            with open(filler, "wb") as f:
                f.write(b"\0" * (3 * 1024 * 1024))
            for i in range(400):
                ack = c.request(make_message(f"FULL{i:04d}", pad=4000))
                codes.append(ack.code)
                if ack.code == "AA":
                    acked.append(f"FULL{i:04d}")
                else:
                    self.assertEqual(ack.code, "AE", ack.raw)
                    self.assertEqual(ack.err_code, "207", ack.raw)
                    break
            self.assertIn("AE", codes, "the store never refused although the disk is full")
            # Space returns: the daemon recovers by itself.
            os.unlink(filler)
            deadline = time.monotonic() + 10
            while True:
                ack = c.request(make_message(f"BACK{time.monotonic_ns()}"))
                if ack.code == "AA":
                    break
                self.assertLess(time.monotonic(), deadline, "no recovery after space returned")
                time.sleep(0.2)
        self.assertEqual(d.query("PRAGMA integrity_check")[0][0], b"ok")
        counts = d.control_id_counts()
        for cid in acked:
            self.assertEqual(counts.get(cid.encode()), 1, cid)
        self.assertEqual(d.stop(), 0)


class SinkBacklog(unittest.TestCase):
    """While the audit sink cannot deliver, intake goes on up to
    store.max_pending_rows undelivered rows; past that, AE "sink backlog
    full" rather than accepting what cannot be kept."""

    def test_backlog_over_the_bound_gets_ae(self):
        d = TLSDaemon(self, [])
        blocked = d.dir / "not-a-directory"
        blocked.write_text("the file sink cannot write its blocks here\n")
        text = d.config_text
        d.config_text = lambda port: text(port).replace(
            "  min_free_disk_mb: 0", "  min_free_disk_mb: 0\n  max_pending_rows: 3").replace(
            f"    directory: {d.dir / 'out'}", f"    directory: {blocked}")
        port = d.start()
        codes = []
        with MLLPConnection(port) as c:
            for i in range(40):
                ack = c.request(make_message(f"BACKLOG{i:03d}"))
                codes.append(ack.code)
                if ack.code == "AE":
                    self.assertEqual(ack.err_code, "207", ack.raw)
                    self.assertIn("backlog", ack.text.lower(), ack.raw)
                    break
                time.sleep(0.05)  # the sink's pending count is refreshed every 100 ms
        self.assertIn("AE", codes, f"never refused: {codes}")
        accepted = codes.index("AE")
        self.assertGreaterEqual(accepted, 3, codes)
        counts = d.control_id_counts()
        for i in range(accepted):
            self.assertEqual(counts.get(f"BACKLOG{i:03d}".encode()), 1)
        self.assertEqual(counts.get(f"BACKLOG{accepted:03d}".encode(), 0), 0)
        self.assertIn("event=backlog_full", d.log())
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main()
