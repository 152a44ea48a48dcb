"""A second, independent client written by others: npm's node-hl7-client
(tests/integration/node/send.mjs)."""

import json
import shutil
import subprocess
import unittest

from harness import FIXTURES, ROOT, DaemonTestCase

NODE_DIR = ROOT / "tests" / "integration" / "node"


def ensure_node_modules(testcase):
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        testcase.skipTest("node and npm are needed for the node-hl7-client test (apt install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "node-hl7-client" / "package.json").is_file():
        try:
            r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
                               cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=300)
        except subprocess.TimeoutExpired:
            testcase.fail("npm ci did not finish within 300 s")
        if r.returncode != 0:
            testcase.fail(f"npm ci --prefix {NODE_DIR} failed:\n{r.stdout.decode(errors='replace')[-3000:]}")
    return node


class NodeHl7Client(DaemonTestCase):

    def test_node_hl7_client_gets_aa_for_each_message(self):
        node = ensure_node_modules(self)
        fixture = FIXTURES / "adt-a04-node.hl7"
        try:
            r = subprocess.run([node, "send.mjs", "--port", str(self.daemon.port), "--count", "3",
                                "--prefix", "NODEIT", "--timeout-ms", "10000", str(fixture)],
                               cwd=str(NODE_DIR), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=60)
        except subprocess.TimeoutExpired:
            self.fail("node send.mjs did not finish within 60 s")
        out = r.stdout.decode()
        self.assertEqual(r.returncode, 0, out + r.stderr.decode())
        lines = [json.loads(l) for l in out.splitlines() if l.strip()]
        acks = [l for l in lines if "msa1" in l]
        self.assertEqual(lines[-1], {"done": True, "sent": 4, "acked": 4})
        self.assertEqual([(a["sent"], a["msa1"], a["msa2"]) for a in acks],
                         [("NODEIT0001", "AA", "NODEIT0001"), ("NODEIT0002", "AA", "NODEIT0002"),
                          ("NODEIT0003", "AA", "NODEIT0003"), ("NODEFILE0001", "AA", "NODEFILE0001")])
        # What the library built is what we stored.
        for cid in ("NODEIT0001", "NODEIT0002", "NODEIT0003"):
            self.assertEqual(self.daemon.count_control_id(cid, "NODECLIENT", "NODEFAC"), 1, cid)
        self.assertEqual(self.daemon.count_control_id("NODEFILE0001", "NODEFILE", "NODEFAC"), 1)
        row = self.daemon.query("SELECT msg_type, \"trigger\" FROM messages WHERE control_id = 'NODEIT0001'")
        self.assertEqual(row, [(b"ADT", b"A01")])

    def test_node_hl7_client_sees_the_rejection(self):
        node = ensure_node_modules(self)
        bad = self.daemon.dir / "bad.hl7"
        bad.write_bytes(b"MSH|^~\\&|NODEFILE|NODEFAC|HL7BRIDGE|HL7BRIDGE|20260301120000||ADT^A04|"
                        b"NODEBAD001|P|9.9\rPID|1||MRN1\r")
        r = subprocess.run([node, "send.mjs", "--port", str(self.daemon.port), "--count", "0", str(bad)],
                           cwd=str(NODE_DIR), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        lines = [json.loads(l) for l in r.stdout.decode().splitlines() if l.strip()]
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(len(lines), 2, lines)
        self.assertEqual(lines[0]["msa1"], "AR")  # version 9.9: README promises AR (ERR 203)
        self.assertEqual(lines[0]["msa2"], "NODEBAD001")
        self.assertEqual(self.daemon.count_control_id("NODEBAD001"), 0)


if __name__ == "__main__":
    unittest.main()
