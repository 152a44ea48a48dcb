"""`user:` drops root once the ports are bound: the daemon then runs as that
user, still stores and acknowledges messages, and its files are 0600 in
0700 directories."""

import os
import pwd
import stat
import unittest

from harness import MLLPConnection, make_message
from test_tls import TLSDaemon


class DropRoot(unittest.TestCase):
    def test_runs_as_configured_user_and_keeps_working(self):
        if os.geteuid() != 0:
            self.skipTest("dropping privileges needs root")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user 'nobody' on this machine")
        d = TLSDaemon(self, [])
        text = d.config_text
        d.config_text = lambda port: "user: nobody\n" + text(port)
        port = d.start()
        with open(f"/proc/{d.proc.pid}/status") as f:
            uids = next(l for l in f if l.startswith("Uid:")).split()[1:]
        self.assertEqual({int(u) for u in uids}, {nobody.pw_uid}, "still running as root")
        self.assertIn("event=privs_dropped user=nobody", d.log())
        with MLLPConnection(port) as c:
            for i in range(3):
                self.assertEqual(c.request(make_message(f"PRIV{i}")).code, "AA")
        self.assertEqual(d.count_control_id("PRIV2"), 1)
        db = os.stat(d.db_path)
        self.assertEqual(stat.S_IMODE(db.st_mode), 0o600)
        self.assertEqual(db.st_uid, nobody.pw_uid)
        self.assertEqual(stat.S_IMODE(os.stat(d.db_path.parent).st_mode), 0o700)
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main()
