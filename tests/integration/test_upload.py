"""`hl7bridge upload`: a prepared connector file (a daily export) checked
against the configured schema and sent in blocks to the strict connector
emulator (tests/integration/emulator.py), with a per-file checkpoint.

- 12,000 rows in blocks of 1,000: the sixth upload is held by the emulator
  (read, never accepted) while the process is killed with SIGKILL; the rerun
  sends the seven missing blocks only — every row arrives exactly once, no
  block twice — and a third run sends nothing.
- A block the connector refuses (400) is kept as failed; the other blocks go;
  the rerun sends only that block (and `redrive` then has nothing to send).
- The refused block is kept in the store with its rows: `redrive --list`
  shows it as upload:N, `redrive upload:N` while the connector still refuses
  exits 1 and keeps it, and once the cause is fixed `redrive --all-failed`
  sends it without the file; every row arrives once, the checkpoint says
  done, and a rerun of the upload sends nothing.
- Problems are reported as file:line: message and nothing is sent.
- inputs.files: the daemon takes a file dropped into its directory, sends
  it and moves it to done_directory; an invalid one stays, logged; one
  with a refused block is moved too, its block kept and not sent again (at
  the next looks, nor when the same export is dropped again), then
  delivered by `redrive` while the daemon runs.
"""

import os
import re
import signal
import subprocess
import time
import unittest
from collections import Counter

import harness
from test_audit_sink import FIXTURE, AuditDaemon, AuditSinkBase

RUN_TIMEOUT_S = 120


class UploadTest(AuditSinkBase):
    def setUp(self):
        harness.require_binary(self)

    def prepare(self, rows=12000, block_rows=1000, emu_kw=None):
        """An emulator, a configuration for it (tsv, CRLF) and a data file
        of `rows` distinct rows made from the fixture's mapped row."""
        port = harness.free_port()
        d = AuditDaemon(self, self.purview(port, batch={"max_rows": block_rows,
                                                         "max_bytes": "64MiB", "max_age_s": 1}))
        d.config_path.write_text(d.config_text(harness.free_port()))
        out = subprocess.run([str(d.bin), "map", "-c", str(d.config_path), str(FIXTURE)],
                             cwd=str(harness.ROOT), capture_output=True, timeout=30)
        header, row = out.stdout.decode().split("\r\n")[:2]
        emu = self.emulator(header, port=port, **(emu_kw or {}))
        fields = row.split("\t")
        lines = [header]
        for i in range(rows):
            fields[5] = f"U{i:09d}"
            lines.append("\t".join(fields))
        data = d.dir / "export.txt"
        data.write_bytes(("\r\n".join(lines) + "\r\n").encode())
        return emu, d, data, lines

    def upload(self, d, *files):
        return subprocess.run([str(d.bin), "upload", "-c", str(d.config_path), *map(str, files)],
                              cwd=str(harness.ROOT), capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)

    def redrive(self, d, *args):
        return subprocess.run([str(d.bin), "redrive", "-c", str(d.config_path), *args],
                              cwd=str(harness.ROOT), capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)

    def test_12000_rows_killed_mid_upload_then_resumed(self):
        emu, d, data, lines = self.prepare()
        emu.upload_faults = [None] * 5 + ["hang"]
        p = subprocess.Popen([str(d.bin), "upload", "-c", str(d.config_path), str(data)],
                             cwd=str(harness.ROOT), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, preexec_fn=harness._die_with_parent)
        try:
            self.assertTrue(emu.hanging.wait(RUN_TIMEOUT_S), "the sixth block never came")
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(30)
            p.stdout.close()
            p.stderr.close()
            emu.release.set()
        self.assertEqual(len(emu.uploads), 5)
        self.assertEqual(emu.accepted_count(), 5000)

        r = self.upload(d, data)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("resuming: 5 of 12 blocks already delivered", r.stdout)
        self.assertIn("delivered: 12000 rows in 12 blocks", r.stdout)
        self.assertEqual(emu.violations, [])
        self.assertEqual(len(emu.uploads), 12, "only the seven missing blocks were sent again")
        got = emu.accepted_rows()
        self.assertEqual(Counter(got), Counter(lines[1:]), "every row exactly once")
        files = [u["file"] for u in emu.uploads]
        self.assertEqual(len(set(files)), 12, "no block sent twice")

        r = self.upload(d, data)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("already delivered (12 blocks)", r.stdout)
        self.assertEqual(len(emu.uploads), 12)
        self.assertNotIn("it-secret", r.stdout + r.stderr)

    def test_refused_block_kept_and_sent_on_rerun(self):
        emu, d, data, lines = self.prepare(rows=3000)
        emu.upload_faults = [None, "400"]
        r = self.upload(d, data)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stderr, r"export\.txt: block 2/3 \(lines 1002-2001\) refused: HTTP 400")
        self.assertEqual(len(emu.uploads), 2)   # blocks 1 and 3
        r = self.upload(d, data)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("resuming: 2 of 3 blocks already delivered", r.stdout)
        self.assertEqual(len(emu.uploads), 3)
        self.assertEqual(Counter(emu.accepted_rows()), Counter(lines[1:]))
        # delivered by the rerun: its kept copy is gone, redrive sends nothing
        r = self.redrive(d, "--all-failed")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("no failed block", r.stdout)
        self.assertEqual(len(emu.uploads), 3)

    def test_refused_block_kept_then_redriven_once(self):
        emu, d, data, lines = self.prepare(rows=3000)
        emu.upload_faults = [None, "400"]
        r = self.upload(d, data)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        m = re.search(r"export\.txt: block 2/3 kept for redrive as (upload:\d+)\n", r.stderr)
        self.assertIsNotNone(m, r.stderr)
        kept = m.group(1)
        self.assertEqual(len(emu.uploads), 2)
        # the connector's answer text may quote rows: only its error code is kept
        self.assertIn("HTTP 400: Injected (", r.stderr)
        self.assertNotIn("fault 400", r.stdout + r.stderr)

        r = self.redrive(d, "--list")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, rf"(?m)^{kept} \S*export\.txt block 2/3 \(lines 1002-2001\):"
                                   r" 1000 rows, 1 attempt, last status 400: HTTP 400: Injected")
        self.assertEqual(len(r.stdout.splitlines()), 1, r.stdout)
        self.assertNotIn("fault 400", r.stdout + r.stderr)

        emu.upload_faults = ["400"]           # the cause not fixed yet
        r = self.redrive(d, kept)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, rf"(?m)^{kept} .* -> refused again: HTTP 400")
        self.assertEqual(len(emu.uploads), 2)

        moved = d.dir / "export.sent"         # the file is not needed: the store has the rows
        data.rename(moved)
        r = self.redrive(d, "--all-failed")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, rf"(?m)^{kept} .*2 attempts, last status 400: .* -> delivered$")
        self.assertIn("delivered 1 upload block, 0 not delivered", r.stdout)
        self.assertEqual(len(emu.uploads), 3)
        self.assertEqual(Counter(emu.accepted_rows()), Counter(lines[1:]), "every row once")
        self.assertEqual(emu.violations, [])

        moved.rename(data)
        r = self.upload(d, data)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("already delivered (3 blocks)", r.stdout)
        self.assertEqual(len(emu.uploads), 3)
        r = self.redrive(d, "--list")
        self.assertEqual((r.returncode, r.stdout.startswith("no failed block")), (0, True),
                         r.stdout + r.stderr)
        r = self.redrive(d, kept)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f"no kept upload block {kept[7:]}", r.stderr)
        self.assertEqual(len(emu.uploads), 3)
        self.assertNotIn("it-secret", r.stdout + r.stderr)

    def test_problems_reported_as_file_line_and_nothing_sent(self):
        emu, d, data, lines = self.prepare(rows=4)
        header, rows = lines[0], lines[1:]
        n = len(header.split("\t"))
        bad = d.dir / "bad.txt"
        empty_mandatory = rows[1].split("\t")
        empty_mandatory[0] = ""            # Creation Time
        bad.write_bytes("\r\n".join([
            header.replace("Event Name", "Event"),             # line 1
            rows[0],                                           # line 2: fine
            "\t".join(rows[1].split("\t")[:-1]),               # line 3: a field short
            "\t".join(empty_mandatory),                        # line 4
            rows[2],                                           # line 5: fine
        ]).encode() + b"\r\n" + rows[3].encode().replace(b"U000000003", b"U\xff00000003")
            + b"\r\n")                                          # line 6: not UTF-8
        bom = d.dir / "bom.txt"
        bom.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
        r = self.upload(d, bad, bom)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        err = r.stderr
        self.assertIn(f'{bad}:1: column 2 of the header is "Event", expected "Event Name"', err)
        self.assertIn(f"{bad}:3: {n - 1} fields, the header has {n}", err)
        self.assertIn(f'{bad}:4: mandatory column "Creation Time" is empty', err)
        self.assertIn(f"{bad}:6: not valid UTF-8", err)
        self.assertIn(f"{bad}: 4 problems; nothing was sent", err)
        self.assertIn(f"{bom}:1: starts with a byte order mark", err)
        self.assertEqual(emu.uploads, [])
        self.assertEqual(emu.token_requests, 0)

    def test_inputs_files_watcher_delivers_and_moves(self):
        emu, d, data, lines = self.prepare(rows=3000)
        inbox, done = d.dir / "in", d.dir / "done"
        inbox.mkdir()
        base = d.config_text

        def config_text(port):
            return base(port) + (f"inputs:\n  poll_s: 1\n  files:\n"
                                 f"    - directory: {harness._yaml_str(inbox)}\n"
                                 f"      pattern: \"*.txt\"\n"
                                 f"      done_directory: {harness._yaml_str(done)}\n"
                                 f"      min_age_s: 0\n")
        d.config_text = config_text
        d.start()
        bad = inbox / "bad.txt"
        bad.write_bytes(data.read_bytes().replace(b"Creation Time", b"Created", 1))
        tmp = inbox / ".export.tmp"          # written aside, then renamed in
        tmp.write_bytes(data.read_bytes())
        tmp.rename(inbox / "export.txt")
        deadline = time.monotonic() + RUN_TIMEOUT_S
        # The file is moved first and the line logged after it: wait for both.
        while time.monotonic() < deadline and not ((done / "export.txt").exists()
                                                   and "event=input_file_delivered" in d.log()):
            time.sleep(0.1)
        self.assertTrue((done / "export.txt").exists(), d.log())
        self.assertFalse((inbox / "export.txt").exists())
        self.assertEqual(Counter(emu.accepted_rows()), Counter(lines[1:]))
        self.assertEqual(len(emu.uploads), 3)
        log = d.log()
        self.assertIn("event=input_file_delivered", log)
        self.assertRegex(log, r'event=upload_invalid file="[^"]*bad\.txt" line=1 ')
        self.assertIn("event=input_file_invalid", log)
        self.assertTrue(bad.exists(), "an invalid file stays where it is")
        # A file whose block the connector refuses: moved, the block kept.
        emu.upload_faults = ["400"]
        tmp = inbox / ".refused.tmp"
        tmp.write_bytes(("\r\n".join(lines[:1001]) + "\r\n").encode())
        tmp.rename(inbox / "refused.txt")
        while time.monotonic() < deadline and "event=input_file_kept_for_redrive" not in d.log():
            time.sleep(0.1)
        self.assertTrue((done / "refused.txt").exists(), d.log())
        # The same export dropped again: its kept block waits for redrive.
        tmp.write_bytes((done / "refused.txt").read_bytes())
        tmp.rename(inbox / "again.txt")
        while time.monotonic() < deadline and \
                d.log().count("event=input_file_kept_for_redrive") < 2:
            time.sleep(0.1)
        self.assertTrue((done / "again.txt").exists(), d.log())
        self.assertEqual(d.log().count("event=input_file_kept_for_redrive"), 2, d.log()[-3000:])
        time.sleep(2.5)                       # two more looks: neither file taken again
        self.assertEqual(d.log().count("event=input_file_invalid"), 1)
        self.assertEqual(len(emu.uploads), 3)
        r = self.redrive(d, "--list")
        self.assertRegex(r.stdout, r"(?m)^upload:\d+ \S*refused\.txt block 1/1 .*"
                                   r"1 attempt, last status 400")
        r = self.redrive(d, "--all-failed")   # while the daemon runs
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(len(emu.uploads), 4)
        self.assertEqual(Counter(emu.accepted_rows()), Counter(lines[1:] + lines[1:1001]))
        d.assert_stops_cleanly()


if __name__ == "__main__":
    unittest.main()
