"""The command line: check, --help, version, run with a bad configuration."""

import os
import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

from harness import ROOT, USERS_CSV, Daemon, free_port, require_binary


class CommandLine(unittest.TestCase):

    def setUp(self):
        self.bin = str(require_binary(self))
        self.tmp = Path(tempfile.mkdtemp(prefix="hl7bridge-it-cli-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def run_bin(self, *args, env=None, timeout=30):
        try:
            return subprocess.run([self.bin, *args], cwd=str(ROOT), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                                  env=env, text=True)
        except subprocess.TimeoutExpired:
            self.fail(f"hl7bridge {' '.join(args)} did not finish within {timeout} s")

    def good_config(self):
        d = Daemon(self, workdir=str(self.tmp))
        path = self.tmp / "good.yaml"
        path.write_text(d.config_text(free_port()))
        return path

    def test_check_good_config_prints_ok_and_exits_0(self):
        path = self.good_config()
        r = self.run_bin("check", "-c", str(path))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("OK", r.stdout)
        self.assertIn(str(path), r.stdout)

    def test_check_shipped_config_exits_0(self):
        r = self.run_bin("check", "-c", "config/hl7bridge.yaml")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("OK", r.stdout)

    def test_check_unknown_key_reports_file_line_column_and_exits_1(self):
        path = self.tmp / "bad.yaml"
        path.write_text("listen:\n"
                        "  - name: main\n"
                        "    address: 127.0.0.1:2575\n"
                        "    max_conections: 5\n"
                        "store:\n"
                        f"  path: {self.tmp}/s.db\n")
        r = self.run_bin("check", "-c", str(path))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        m = re.search(r"^(.+):(\d+):(\d+): (.+)$", r.stderr, re.M)
        self.assertIsNotNone(m, f"no file:line:column: message in {r.stderr!r}")
        self.assertEqual(m.group(1), str(path))
        self.assertEqual((int(m.group(2)), int(m.group(3))), (4, 5), m.group(0))
        self.assertIn("max_conections", m.group(4))
        self.assertNotIn("OK", r.stdout)

    def test_check_reports_every_error(self):
        path = self.tmp / "bad2.yaml"
        path.write_text("listen:\n"
                        "  - name: main\n"
                        "    address: 127.0.0.1:99999\n"
                        "ack:\n"
                        "  mode: sometimes\n"
                        "colour: blue\n")
        r = self.run_bin("check", "-c", str(path))
        self.assertEqual(r.returncode, 1)
        lines = [l for l in r.stderr.splitlines() if re.match(re.escape(str(path)) + r":\d+:\d+: ", l)]
        self.assertEqual(sorted(int(l.split(":")[1]) for l in lines), [3, 5, 6], r.stderr)

    def test_check_reports_what_run_would_find_with_the_rest(self):
        """A missing rule file and a user that does not exist are reported
        together with the other errors, each as file:line:column; plain
        http:// endpoints too (secrets would go out in clear)."""
        path = self.tmp / "bad3.yaml"
        path.write_text("user: nosuchuser-hb\n"
                        "mapping:\n"
                        f"  rules: [{self.tmp}/missing-rules.yaml]\n"
                        "ack:\n"
                        "  mode: sometimes\n"
                        "sinks:\n"
                        "  audit: {token_url: \"http://127.0.0.1:9/t\"}\n"
                        "  sms: {endpoint: \"http://127.0.0.1:9\"}\n")
        r = self.run_bin("check", "-c", str(path))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        errs = {int(l.split(":")[1]): l for l in r.stderr.splitlines()
                if re.match(re.escape(str(path)) + r":\d+:\d+: ", l)}
        self.assertEqual(sorted(errs), [1, 3, 5, 7, 8], r.stderr)
        self.assertIn("nosuchuser-hb", errs[1])
        self.assertIn("missing-rules.yaml", errs[3])
        self.assertIn("https://", errs[7])
        self.assertIn("https://", errs[8])
        self.assertNotIn("OK", r.stdout)

    def test_check_reports_sms_templates_and_links(self):
        """Placeholders of SMS templates and link templates (global, per
        language, per facility) are checked by `check`, and `run` refuses
        them before it serves."""
        path = self.tmp / "sms.yaml"
        path.write_text("listen:\n"
                        "  - name: main\n"
                        f"    address: 127.0.0.1:{free_port()}\n"
                        f"store:\n  path: {self.tmp}/s.db\nmetrics:\n  enabled: false\n"
                        "sinks:\n"
                        "  sms:\n"
                        f"    path: {self.tmp}/sms.jsonl\n"
                        '    link: "https://v.test/{appointment_id}"\n'
                        "    facilities:\n"
                        "      - codes: [NORTH]\n"
                        '        templates: {reminder: "See you {when}"}\n'
                        '        link: "https://n.test/{appt}"\n')
        r = self.run_bin("check", "-c", str(path))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f"{path}: sinks.sms.facilities[0].templates.reminder: unknown placeholder "
                      "{when}", r.stderr)
        self.assertIn(f"{path}: sinks.sms.facilities[0].link: unknown placeholder {{appt}}",
                      r.stderr)
        self.assertNotIn("OK", r.stdout)
        r = self.run_bin("run", "-c", str(path), timeout=15)
        self.assertEqual(r.returncode, 1)
        self.assertIn("sinks.sms.facilities[0].templates.reminder: unknown placeholder", r.stderr)

    def test_check_loads_the_tls_files_as_run_does(self):
        """A certificate file that exists but is not a certificate passed
        `check` and stopped `run`: `check` loads it the same way."""
        (self.tmp / "cert.pem").write_text("not a certificate\n")
        (self.tmp / "key.pem").write_text("not a key\n")
        path = self.tmp / "tls.yaml"
        path.write_text("listen:\n"
                        "  - name: secure\n"
                        "    address: 127.0.0.1:2575\n"
                        f"    tls: {{cert_file: {self.tmp}/cert.pem, key_file: {self.tmp}/key.pem}}\n"
                        f"store:\n  path: {self.tmp}/s.db\nmetrics:\n  enabled: false\n")
        r = self.run_bin("check", "-c", str(path))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f"{path}: listen[0] (secure): tls: cannot load certificate", r.stderr)
        self.assertNotIn("OK", r.stdout)
        r = self.run_bin("run", "-c", str(path), timeout=15)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot load certificate", r.stderr)

    def test_check_unset_environment_variable_is_named(self):
        path = self.tmp / "env.yaml"
        path.write_text("store:\n  path: ${HL7BRIDGE_IT_UNSET_VARIABLE}/s.db\n")
        env = {k: v for k, v in os.environ.items() if k != "HL7BRIDGE_IT_UNSET_VARIABLE"}
        r = self.run_bin("check", "-c", str(path), env=env)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, re.escape(str(path)) + r":2:\d+: .*HL7BRIDGE_IT_UNSET_VARIABLE")

    def test_environment_variable_is_substituted(self):
        path = self.tmp / "env2.yaml"
        path.write_text("store:\n  path: ${HL7BRIDGE_IT_DIR}/s.db\nmetrics:\n  enabled: false\n")
        r = self.run_bin("check", "-c", str(path), env={**os.environ, "HL7BRIDGE_IT_DIR": str(self.tmp)})
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_run_with_bad_config_exits_1_without_listening(self):
        path = self.tmp / "bad.yaml"
        path.write_text("listen:\n  - name: main\n    address: 127.0.0.1:2575\n    bogus: 1\n")
        r = self.run_bin("run", "-c", str(path), timeout=15)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, re.escape(str(path)) + r":4:5: ")
        self.assertNotIn("event=listening", r.stderr)

    def test_map_row_never_carries_control_bytes(self):
        """Control bytes (STX, SOH, ESC, DEL, a C1 control, a tab) inside
        PID-5.1, raw and as \\Xhh\\ (NUL included): `map` (what the audit sink
        writes) prints them as spaces.  A raw NUL is refused (AR 102) before
        any rule runs."""
        msg = (ROOT / "tests/fixtures/messages/adt-a01.hl7").read_bytes()
        msg = msg.replace(b"|DOE^JANE^", b"|DO\x02E\x01\x1b\x7f\xc2\x85\\X00\\\\X0A\\X\tY^JANE^", 1)
        # an operator the users table knows, so the shipped rules make a row
        msg = msg.replace(b"|20231105143000-0500||||", b"|20231105143000-0500|||HB01|", 1)
        path = self.tmp / "ctl.hl7"
        path.write_bytes(msg)
        for fmt in ("tsv", "csv", "psv"):
            with self.subTest(format=fmt):
                cfg = self.tmp / f"{fmt}.yaml"
                cfg.write_text(f"sinks:\n  audit:\n    format: {fmt}\n    line_ending: lf\n"
                               f"store:\n  path: {self.tmp}/s.db\nmetrics:\n  enabled: false\n"
                               f"mapping:\n  lookups:\n    users: {{file: {USERS_CSV}}}\n")
                r = subprocess.run([self.bin, "map", "-c", str(cfg), str(path)], cwd=str(ROOT),
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
                self.assertEqual(r.returncode, 0, r.stderr)
                lines = r.stdout.split(b"\n")
                self.assertEqual(lines[-1], b"")
                self.assertEqual(len(lines), 3, r.stdout)   # header, one row
                row = lines[1]
                allowed = b"\t" if fmt == "tsv" else b""
                bad = [c for c in row if (c < 0x20 and bytes([c]) not in allowed) or c == 0x7f]
                self.assertEqual(bad, [], row)
                self.assertNotIn(b"\xc2\x85", row)
                self.assertIn(b"DO E" + b" " * 6 + b"X Y", row)

    def test_help_exits_0(self):
        for args in (["--help"], ["help"], ["run", "--help"], ["check", "--help"], ["send", "--help"]):
            with self.subTest(args=args):
                r = self.run_bin(*args)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("usage", r.stdout.lower())

    def test_version(self):
        r = self.run_bin("version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^hl7bridge \d+\.\d+\.\d+")

    def test_unknown_command_and_bad_usage_exit_non_zero(self):
        self.assertEqual(self.run_bin("frobnicate").returncode, 2)
        self.assertNotEqual(self.run_bin().returncode, 0)
        self.assertEqual(self.run_bin("send", "127.0.0.1:1").returncode, 2)


if __name__ == "__main__":
    unittest.main()
