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

from harness import Daemon, MLLPConnection, OnPostgreSQL, make_message, frame, _yaml_str
from test_tls import TLSDaemon


class Sender(threading.Thread):
    """Mixed load on several connections: new messages, re-sends of earlier
    ones (duplicates) and malformed frames; records every control id that
    got AA (checking that each ACK answers the frame just sent), until its
    connection breaks."""

    def __init__(self, port, tag, acked, lock, rng):
        super().__init__(daemon=True)
        self.port, self.tag, self.acked, self.lock, self.rng = port, tag, acked, lock, rng
        self.protocol_errors = []  # ACKs that answer the wrong frame

    def run(self):
        n = 0
        try:
            with MLLPConnection(self.port, timeout=5) as c:
                while True:
                    r = self.rng.random()
                    if r < 0.1:
                        c.send_raw(frame(b"GARBAGE" + os.urandom(20).replace(b"\x1c", b"")))
                        ack = c.recv_ack()
                        if ack.code != "AR":
                            self.protocol_errors.append(f"garbage answered {ack.code}")
                        continue
                    if r < 0.25 and self.acked:
                        with self.lock:
                            cid = self.rng.choice(sorted(self.acked))
                    else:
                        n += 1
                        cid = f"{self.tag}-{n}"
                    ack = c.request(make_message(cid))
                    if ack.control_id_text != cid:
                        # An ACK for another message: recording it would
                        # claim the wrong message stored.
                        self.protocol_errors.append(f"ACK for {ack.control_id_text!r}, sent {cid}")
                        return
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
                self.assertEqual(s.protocol_errors, [], f"round {rnd}")
            d.start()  # same port, same store
        counts = d.control_id_counts()
        missing = [c for c in acked if counts.get(c.encode(), 0) != 1]
        self.assertEqual(missing, [], f"{len(missing)} AA'd messages not stored exactly once")
        self.assertGreater(len(acked), 200, "too little load to mean anything")
        self.assertTrue(d.store_intact())
        self.assertEqual(d.stop(), 0)


class KillNineOnPostgreSQL(OnPostgreSQL, KillNine):
    """The same on store.type postgresql (fewer rounds: each start connects
    to the server and checks its schema)."""
    ROUNDS = 20


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
        self.assertTrue(d.store_intact())
        counts = d.control_id_counts()
        for cid in acked:
            self.assertEqual(counts.get(cid.encode()), 1, cid)
        self.assertEqual(d.stop(), 0)


class FullDiskOnPostgreSQL(OnPostgreSQL, FullDisk):
    SQLITE_ONLY = {"test_full_disk_gives_ae_then_recovers":
                   "the disk under the SQLite file fills up; a PostgreSQL server that cannot"
                   " store is test_postgresql's CommitFails and ServerOutage"}


class SinkBacklog(unittest.TestCase):
    """While the audit sink cannot deliver, intake goes on up to
    store.max_pending_rows undelivered rows; past that, AE "sink backlog
    full" rather than accepting what cannot be kept; once the sink delivers
    again, intake resumes by itself.  A batch is bounded member by member."""

    MAX_ROWS = 3

    def blocked_daemon(self):
        """A daemon whose file sink really cannot write: once it has
        started, its directory is replaced by a regular file (a permission
        would not stop root).  Returns (daemon, port, the sink directory)."""
        d = Daemon(self)
        out = d.dir / "out"
        text = d.config_text
        store_line = "  min_free_disk_mb: 0"
        sink_line = f"    directory: {_yaml_str(out)}"

        def config(port):
            t = text(port)
            # Both lines must be there, or the sink is not blocked at all.
            self.assertIn(store_line, t)
            self.assertIn(sink_line, t)
            return t.replace(store_line, f"{store_line}\n  max_pending_rows: {self.MAX_ROWS}").replace(
                "    type: file\n" + sink_line,
                "    type: file\n" + sink_line + "\n    batch: {max_rows: 1, max_age_s: 1}")

        d.config_text = config
        port = d.start()
        self.assertIn(f"max_pending_rows: {self.MAX_ROWS}", d.config_path.read_text())
        self.assertEqual(list(out.iterdir()), [])
        out.rmdir()
        out.write_text("the file sink cannot write its blocks here\n")
        return d, port, out

    def test_backlog_over_the_bound_gets_ae_then_recovers(self):
        d, port, out = self.blocked_daemon()
        codes = []
        with MLLPConnection(port) as c:
            for i in range(100):
                ack = c.request(make_message(f"BACKLOG{i:03d}"))
                codes.append(ack.code)
                if ack.code == "AE":
                    self.assertEqual(ack.err_code, "207", ack.raw)
                    self.assertIn("sink backlog full", ack.text.lower(), ack.raw)
                    break
                self.assertEqual(ack.code, "AA", ack)
                time.sleep(0.05)  # the sink's pending count is refreshed every 100 ms
            self.assertIn("AE", codes, f"never refused: {codes}\n{d.log()}")
            accepted = codes.index("AE")
            self.assertGreaterEqual(accepted, self.MAX_ROWS, codes)
            counts = d.control_id_counts()
            for i in range(accepted):
                self.assertEqual(counts.get(f"BACKLOG{i:03d}".encode()), 1)
            self.assertEqual(counts.get(f"BACKLOG{accepted:03d}".encode(), 0), 0)
            self.assertIn("event=backlog_full", d.log())
            self.assertTrue(out.is_file(), "the sink was not blocked")

            # The cause goes away: the sink delivers the backlog, intake resumes.
            out.unlink()
            out.mkdir()
            deadline = time.monotonic() + 60
            n = 0
            while True:
                n += 1
                ack = c.request(make_message(f"RECOVER{n:03d}"))
                if ack.code == "AA":
                    break
                self.assertEqual((ack.code, ack.err_code), ("AE", "207"), ack.raw)
                self.assertLess(time.monotonic(), deadline, f"no recovery\n{d.log()}")
                time.sleep(0.2)
        delivered = b"".join(p.read_bytes() for p in out.iterdir() if p.is_file())
        self.assertTrue(delivered, "nothing delivered after recovery")
        self.assertEqual(d.stop(), 0)

    def test_a_batch_does_not_pass_the_bound(self):
        d, port, _ = self.blocked_daemon()
        members = [make_message(f"BATCH{i:03d}") for i in range(50)]
        batch = (b"FHS|^~\\&|TESTAPP|TESTFAC|HL7BRIDGE|HL7BRIDGE|20260301120000||||FILE1\r"
                 b"BHS|^~\\&|TESTAPP|TESTFAC|HL7BRIDGE|HL7BRIDGE|20260301120000||||BATCH1\r"
                 + b"".join(members) + b"BTS|50\rFTS|1\r")
        with MLLPConnection(port) as c:
            ack = c.request(batch)
        self.assertEqual(ack.code, "AE", ack.raw)
        self.assertEqual(ack.control_id, b"BATCH1", ack.raw)
        self.assertEqual(ack.err_code, "207", ack.raw)
        counts = d.control_id_counts()
        stored = sum(counts.get(f"BATCH{i:03d}".encode(), 0) for i in range(50))
        # Each member sees the rows of the ones before it: at most the bound
        # plus one get in, as for single messages.
        self.assertGreaterEqual(stored, 1, ack.raw)
        self.assertLessEqual(stored, self.MAX_ROWS + 1, f"{stored} of 50 batch members stored")
        self.assertIn("event=backlog_full", d.log())
        self.assertEqual(d.stop(), 0)


class SinkBacklogOnPostgreSQL(OnPostgreSQL, SinkBacklog):
    """The same on store.type postgresql."""


if __name__ == "__main__":
    unittest.main()
