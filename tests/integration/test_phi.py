"""No PHI in logs or monitoring: messages carrying marker names, MRNs, phone
numbers, addresses and notes go through every path (accepted, quarantined,
rejected AR and AE, SMS, audit sink failures) with the log at debug level;
none of the markers may appear in the daemon's stderr log, /metrics,
/status, the page `/`, or `hl7bridge stats`.  The markers do reach the
store and the SMS output, which shows each path was really taken."""

import subprocess
import time
import unittest
import urllib.error
import urllib.request

from harness import ROOT, Daemon, MLLPConnection, free_port, frame, require_binary
from test_reload_rules import with_mapping
from test_audit_sink import AuditSinkBase

FAMILY, GIVEN = "ZZQFAMILYX", "ZZQGIVENX"
MRN = "ZZQMRN4711"
PHONE_LOCAL = "5550199"                      # in ^PRN^CP^^1^847^5550199
ADDRESS = "ZZQSTREETX"
NOTE = "ZZQNOTEX"
MARKERS = [FAMILY, GIVEN, MRN, PHONE_LOCAL, ADDRESS, NOTE]


def pid(family=FAMILY, given=GIVEN, street=ADDRESS):
    return (f"PID|1||{MRN}^^^HOSP^MR||{family}^{given}||19800101|F|||"
            f"{street}^^SPRINGFIELD^IL^62701||^PRN^CP^^1^847^{PHONE_LOCAL}")


def msh(ctl, msg_type="ADT^A01", version="2.5"):
    return f"MSH|^~\\&|PHIAPP|PHIFAC|HL7BRIDGE|HL7BRIDGE|20260301120000||{msg_type}|{ctl}|P|{version}"


def msg(*segs):
    return ("\r".join(segs) + "\r").encode("ascii")


def siu(ctl, start):
    when = time.strftime("%Y%m%d%H%M%S+0000", time.gmtime(start))
    now = time.strftime("%Y%m%d%H%M%S+0000", time.gmtime())
    tmpl = (ROOT / "tests" / "fixtures" / "sms" / "siu.hl7.tmpl").read_text()
    text = tmpl.format(trigger="S12", appt=ctl, start=when, evn=now,
                       phone=f"^PRN^CP^^1^847^{PHONE_LOCAL}", consent="Y", room="Exam 3",
                       duration=30, facility="CONTOSO", first=GIVEN, ctrl=ctl,
                       address=f"{ADDRESS}^^SPRINGFIELD^IL^62701", language="")
    return text.replace("SMITH^", f"{FAMILY}^").encode("utf-8")


class PHIDaemon(Daemon):
    def __init__(self, testcase, **opts):
        super().__init__(testcase, log_level="debug", **opts)
        self.mport = free_port()

    def config_text(self, port):
        text = super().config_text(port)
        assert "metrics:\n  enabled: false\n" in text
        sink = "    type: file\n    directory: "
        assert sink in text
        text = text.replace(sink, "    type: file\n    batch: {max_rows: 1, max_age_s: 1}\n"
                                  "    directory: ", 1)
        text = text.replace("metrics:\n  enabled: false\n",
                            f"metrics:\n  address: 127.0.0.1:{self.mport}\n  enabled: true\n")
        return with_mapping(text, ["  unmatched: reject"])

    def get(self, path):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://127.0.0.1:{self.mport}{path}", timeout=10) as r:
                return r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.read().decode("utf-8", "replace")


class NoPHI(unittest.TestCase):

    def wait(self, pred, what, timeout=20):
        deadline = time.monotonic() + timeout
        while not pred():
            self.assertLess(time.monotonic(), deadline, what)
            time.sleep(0.1)

    def test_markers_never_leave_the_store(self):
        d = PHIDaemon(self)
        port = d.start()
        self.assertIn("level: debug", d.config_path.read_text())
        out = d.dir / "out"
        plan = [
            # accepted: full demographics and a note
            (msg(msh("PHI-OK"), "EVN|A01|20260301120000|||HB01", pid(), f"NTE|1||{NOTE}"), "AA"),
            # quarantined: a mandatory column (the name) empty
            (msg(msh("PHI-Q"), "EVN|A01|20260301120000|||HB01", pid(family="", given=""),
                 f"NTE|1||{NOTE}"), "AA"),
            # rejected by the parser: a bad segment id after the PHI
            (msg(msh("PHI-AR1"), pid(), f"1BAD|{NOTE}"), "AR"),
            # rejected: version not 2.x
            (msg(msh("PHI-AR2", version="9.9"), pid()), "AR"),
            # rejected by the rules: unmatched type
            (msg(msh("PHI-AE", msg_type="ZZZ^Z01"), pid(), f"NTE|1||{NOTE}"), "AE"),
            # SMS: an appointment for a patient with consent
            (siu("PHI-SMS", time.time() + 3 * 86400), "AA"),
        ]
        with MLLPConnection(port) as c:
            c.send_raw(frame(f"{FAMILY} {MRN} garbage that is not HL7".encode()))
            self.assertEqual(c.recv_ack().code, "AR")
            for m, code in plan:
                ack = c.request(m)
                self.assertEqual(ack.code, code, ack.raw)
        # The SMS path was taken (the text names the patient).
        sms = d.dir / "sms.jsonl"
        self.wait(lambda: sms.exists() and GIVEN in sms.read_text(errors="replace"),
                  "no SMS text written")
        self.wait(lambda: any((out).iterdir()), "no audit block written")
        # The audit sink fails: its directory is replaced by a file.
        out.rename(d.dir / "out.away")
        out.write_text("blocked\n")
        with MLLPConnection(port) as c:
            for i in range(3):
                ack = c.request(msg(msh(f"PHI-FAIL{i}"), "EVN|A01|20260301120000|||HB01", pid(),
                                    f"NTE|1||{NOTE}"))
                self.assertEqual(ack.code, "AA", ack.raw)
        self.wait(lambda: "event=audit_block_retry" in d.log(), "the audit sink never failed")
        # Stored as received (PHI belongs in the store).
        raw = b"".join(r[0] or b"" for r in d.query("SELECT raw FROM messages"))
        for mk in MARKERS:
            self.assertIn(mk.encode(), raw, mk)

        status = d.get("/status")
        metrics = d.get("/metrics")
        page = d.get("/")
        self.assertIn("PHIAPP", metrics)  # the sender is shown; its patients are not
        r = subprocess.run([str(require_binary(self)), "stats", "-c", str(d.config_path)],
                           cwd=str(ROOT), stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=60, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        stats = r.stdout + r.stderr
        self.assertEqual(d.stop(), 0)
        log = d.log()
        self.assertIn("level=debug", log)
        for name, text in (("log", log), ("/status", status), ("/metrics", metrics),
                           ("page /", page), ("stats", stats)):
            for mk in MARKERS:
                at = text.find(mk)
                self.assertEqual(at, -1, f"{mk} in {name}: …{text[max(0, at - 200):at + 100]}…")


class NoPHIFromTheConnector(AuditSinkBase):
    """The connector answers 400 quoting the rows it refused: the block is
    kept as failed, and the quoted patient data goes to no log line and no
    `stats` output."""

    def test_connector_error_quoting_rows_is_not_logged(self):
        emu, d = self.start_pair()
        emu.upload_faults = ["400:echo"]
        with MLLPConnection(d.port) as c:
            ack = c.request(msg(msh("PHI-UP"), "EVN|A01|20260301120000|||HB01", pid(), f"NTE|1||{NOTE}"))
            self.assertEqual(ack.code, "AA", ack.raw)
        deadline = time.monotonic() + 30
        while d.batch_states().get("failed", 0) == 0:
            self.assertLess(time.monotonic(), deadline, f"no failed block {d.batch_states()} {emu.violations}\n{d.log()[-3000:]}")
            time.sleep(0.1)
        quoted = [r[0] for r in d.query("SELECT last_error FROM batches WHERE state = 'failed'")]
        r = subprocess.run([str(require_binary(self)), "stats", "-c", str(d.config_path)],
                           cwd=str(ROOT), stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=60, text=True)
        stats = r.stdout + r.stderr
        self.assertEqual(d.stop(), 0)
        log = d.log()
        self.assertIn("audit_block_failed", log)
        for name, text in (("log", log), ("stats", stats)):
            for mk in (FAMILY, GIVEN, MRN):
                at = text.find(mk)
                self.assertEqual(at, -1, f"{mk} in {name}: …{text[max(0, at - 200):at + 100]}…"
                                         f" (stored error: {quoted})")


if __name__ == "__main__":
    unittest.main()
