"""Operating hl7bridge as an installed service: it runs from any working
directory with the rules compiled into it, relative paths in a configuration
file lead into that file's directory, and `check --dump` shows where."""

import os
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

from harness import Daemon, free_port, make_message, require_binary


def run_bin(tc, *args, cwd, timeout=30):
    try:
        return subprocess.run([str(require_binary(tc)), *args], cwd=str(cwd),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, text=True)
    except subprocess.TimeoutExpired:
        tc.fail(f"hl7bridge {' '.join(args)} did not finish within {timeout} s")


class RelativeDaemon(Daemon):
    """A daemon whose configuration names its files relative to itself and
    has no `mapping:` section, started from an unrelated empty directory."""

    def __init__(self, testcase):
        super().__init__(testcase)
        self.db_path = self.dir / "state" / "hl7bridge.db"
        elsewhere = tempfile.mkdtemp(prefix="hl7bridge-it-cwd-")
        testcase.addCleanup(shutil.rmtree, elsewhere, True)
        self.cwd = Path(elsewhere)

    def config_text(self, port):
        return "\n".join([
            "listen:",
            "  - name: it",
            f"    address: 127.0.0.1:{port}",
            "store:",
            "  path: state/hl7bridge.db",
            "  min_free_disk_mb: 0",
            "sinks:",
            "  audit: {type: file, directory: out, batch: {max_age_s: 1}}",
            "  sms: {type: file, path: texts/sms.jsonl}",
            "metrics: {enabled: false}",
        ]) + "\n"


class RunsAnywhere(unittest.TestCase):

    def test_runs_from_another_directory_with_the_built_in_rules(self):
        d = RelativeDaemon(self)
        d.start()
        self.assertIn("rules=3", d.log())
        with d.connect() as c:
            ack = c.request(make_message("ANYWHERE1"))
        self.assertEqual(ack.code, "AA", ack.raw)
        # The ADT rule mapped it: one connector row in the store beside the
        # configuration, none of it in the working directory.
        rows = d.query("SELECT COUNT(*) FROM rows")[0][0]
        self.assertEqual(rows, 1)
        out = d.dir / "out"
        deadline = time.monotonic() + 20  # the block is sealed after max_age_s (1 s)
        while time.monotonic() < deadline and not (out.is_dir() and any(out.iterdir())):
            time.sleep(0.1)
        self.assertTrue(out.is_dir() and any(out.iterdir()), f"no audit block\n{d.log()}")
        d.assert_stops_cleanly()
        self.assertEqual(list(d.cwd.iterdir()), [])

    def test_check_dump_shows_where_each_path_led(self):
        d = RelativeDaemon(self)
        d.config_path.write_text(d.config_text(free_port()))
        r = run_bin(self, "check", "-c", str(d.config_path), "--dump", cwd=d.cwd)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        base = os.path.realpath(d.dir)
        self.assertIn(f"# relative paths written in it resolve against {base}\n", r.stdout)
        self.assertIn(f'path: "{base}/state/hl7bridge.db"  # written: "state/hl7bridge.db"',
                      r.stdout)
        self.assertIn(f'directory: "{base}/out"  # written: "out"', r.stdout)
        self.assertIn("rules: []  # none: the built-in ones", r.stdout)
        self.assertIn("builtin:adt.yaml builtin:siu.yaml builtin:access-audit.yaml", r.stdout)

    def test_check_without_a_file_uses_the_compiled_in_configuration(self):
        empty = Path(tempfile.mkdtemp(prefix="hl7bridge-it-cwd-"))
        self.addCleanup(shutil.rmtree, empty, True)
        r = run_bin(self, "check", "--dump", cwd=empty)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("(embedded default): configuration OK (1 listener, 3 mapping rules)",
                      r.stdout)
        self.assertIn('path: "var/hl7bridge.db"  # relative to the working directory', r.stdout)

    def test_shipped_configuration_leads_to_the_project_var(self):
        root = Path(__file__).resolve().parents[2]
        empty = Path(tempfile.mkdtemp(prefix="hl7bridge-it-cwd-"))
        self.addCleanup(shutil.rmtree, empty, True)
        r = run_bin(self, "check", "-c", str(root / "config" / "hl7bridge.yaml"), "--dump",
                    cwd=empty)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(f'path: "{root}/config/../var/hl7bridge.db"', r.stdout)


if __name__ == "__main__":
    unittest.main()
