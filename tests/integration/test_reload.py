"""SIGHUP and restarts that change the connector schema while rows are
pending: rows are stored already formatted, so every connector file must
carry the header of the schema its rows were made for (23 healthcare
columns, 22 Epic columns), and a reload the running audit sink cannot
follow is refused with the reason."""

import os
import signal
import time
import unittest

from harness import Daemon, OnPostgreSQL, make_message

FILES_TIMEOUT_S = 30
HEALTHCARE_COLUMNS = 23
EPIC_COLUMNS = 22


class SchemaDaemon(Daemon):
    """A daemon with the file sink, blocks sealed after max_age_s, and the
    schema of opts['schema']."""

    def config_text(self, port):
        text = super().config_text(port)
        o = self.opts
        schema = f"  schema: {o.get('schema', 'healthcare')}\n"
        text = (text.replace("mapping:\n", "mapping:\n" + schema, 1) if "\nmapping:\n" in text
                else text + "mapping:\n" + schema)
        batch = f"    batch: {{max_age_s: {o.get('max_age_s', 1)}}}\n"
        text = text.replace("    type: file\n", "    type: file\n" + batch, 1)
        if "sms_max_segments" in o:
            text = text.replace("  sms:\n", f"  sms:\n    max_segments: {o['sms_max_segments']}\n", 1)
        return text

    def reconfigure(self, **opts):
        """Rewrites the configuration file with new options and sends SIGHUP."""
        self.opts.update(opts)
        self.config_path.write_text(self.config_text(self.port))
        os.kill(self.proc.pid, signal.SIGHUP)


class SchemaChange(unittest.TestCase):

    def send(self, d, first, n):
        with d.connect() as c:
            for i in range(first, first + n):
                ack = c.request(make_message(f"R{i}"))
                self.assertEqual(ack.code, "AA", ack)

    def files(self, d, want_rows):
        """{name: [lines]} of the connector files once `want_rows` rows are
        out in them."""
        out = d.dir / "out"
        deadline = time.monotonic() + FILES_TIMEOUT_S
        while True:
            got = {}
            if out.is_dir():
                for p in sorted(out.iterdir()):
                    if p.name.startswith("hl7bridge-audit-"):
                        got[p.name] = p.read_bytes().decode("utf-8").split("\r\n")[:-1]
            rows = sum(len(lines) - 1 for lines in got.values())
            if rows >= want_rows or time.monotonic() > deadline:
                self.assertEqual(rows, want_rows, f"{got}\n--- log ---\n{d.log()}")
                return got
            time.sleep(0.1)

    def assert_each_file_matches_its_header(self, files):
        widths = []
        for name, lines in files.items():
            header = lines[0].split("\t")
            for row in lines[1:]:
                self.assertEqual(len(row.split("\t")), len(header),
                                 f"{name}: a {len(row.split(chr(9)))}-column row under a "
                                 f"{len(header)}-column header")
            widths.append(len(header))
        return widths

    def wait_log(self, d, text):
        deadline = time.monotonic() + FILES_TIMEOUT_S
        while text not in d.log():
            self.assertLess(time.monotonic(), deadline, f"no {text!r} in\n{d.log()}")
            time.sleep(0.05)

    def test_sighup_to_epic_keeps_each_block_under_its_own_header(self):
        d = SchemaDaemon(self, schema="healthcare", max_age_s=3600)
        d.start()
        self.send(d, 0, 5)          # healthcare rows, their block still open
        d.reconfigure(schema="epic")
        self.wait_log(d, "event=reload ")
        self.send(d, 5, 4)          # epic rows
        d.stop()                    # rows pending: the open blocks wait for max_age
        d.opts["max_age_s"] = 1
        d.start()
        widths = self.assert_each_file_matches_its_header(self.files(d, 9))
        self.assertEqual(sorted(widths), [EPIC_COLUMNS, HEALTHCARE_COLUMNS])
        d.assert_stops_cleanly()

    def test_restart_with_rows_pending_keeps_their_header(self):
        d = SchemaDaemon(self, schema="epic", max_age_s=3600)
        d.start()
        self.send(d, 0, 3)          # epic rows, block open
        d.stop()
        d.opts.update(schema="healthcare", max_age_s=1)
        d.start()
        self.send(d, 3, 2)          # healthcare rows
        widths = self.assert_each_file_matches_its_header(self.files(d, 5))
        self.assertEqual(sorted(widths), [EPIC_COLUMNS, HEALTHCARE_COLUMNS])
        d.assert_stops_cleanly()

    def test_reload_the_audit_sink_cannot_follow_is_refused(self):
        d = SchemaDaemon(self, schema="healthcare", max_age_s=1)
        d.start()
        d.reconfigure(schema="epic", max_age_s=7)
        self.wait_log(d, "event=reload_refused")
        self.assertRegex(d.log(), r'reason="sinks\.audit\.batch\.max_age_s changed')
        self.send(d, 0, 2)          # still the healthcare schema
        widths = self.assert_each_file_matches_its_header(self.files(d, 2))
        self.assertEqual(widths, [HEALTHCARE_COLUMNS])
        d.assert_stops_cleanly()

    def test_reload_the_sms_sink_cannot_follow_is_refused(self):
        """The SMS sink keeps the settings it started with: a reload that
        changes them (here with a schema change the audit sink could follow)
        is refused whole, so rules and texts never run on two configurations."""
        d = SchemaDaemon(self, schema="healthcare", max_age_s=1, sms_max_segments=3)
        d.start()
        d.reconfigure(schema="epic", sms_max_segments=2)
        self.wait_log(d, "event=reload_refused")
        self.assertRegex(d.log(), r'reason="sinks\.sms changed')
        self.send(d, 0, 2)          # still the healthcare schema
        widths = self.assert_each_file_matches_its_header(self.files(d, 2))
        self.assertEqual(widths, [HEALTHCARE_COLUMNS])
        d.assert_stops_cleanly()


class SchemaChangeOnPostgreSQL(OnPostgreSQL, SchemaChange):
    """The same on store.type postgresql: row layouts are shared by the
    nodes (table row_layouts), rows and blocks carry theirs."""


if __name__ == "__main__":
    unittest.main()
