"""SIGHUP reloads the mapping rules without dropping connections: changed
rules are used for the next message; a rule file that does not compile
keeps the running rules and the error is logged."""

import signal
import time
import unittest

from harness import ROOT, Daemon, MLLPConnection, _yaml_str, make_message


def with_mapping(text, lines):
    """The configuration text with `lines` added to its mapping section (made
    when there is none)."""
    if "\nmapping:\n" in text:
        return text.replace("\nmapping:\n", "\nmapping:\n" + "\n".join(lines) + "\n", 1)
    return text.rstrip("\n") + "\nmapping:\n" + "\n".join(lines) + "\n"


class RulesDaemon(Daemon):
    """A daemon whose mapping rules are one file in its directory, with
    unmatched messages rejected (AE 200), so which rules run is visible."""

    def __init__(self, testcase, **opts):
        super().__init__(testcase, **opts)
        self.rules = self.dir / "rules.yaml"

    def config_text(self, port):
        return with_mapping(super().config_text(port),
                            ["  unmatched: reject", "  rules:", f"    - {_yaml_str(self.rules)}"])


class Reload(unittest.TestCase):

    def reload(self, d, event):
        before = d.log().count(event)
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while d.log().count(event) <= before:
            self.assertLess(time.monotonic(), deadline, f"no {event} after SIGHUP\n{d.log()}")
            time.sleep(0.05)

    def test_changed_rules_are_used_and_bad_rules_keep_the_old(self):
        d = RulesDaemon(self)
        adt = (ROOT / "config" / "mappings" / "adt.yaml").read_text()
        siu = (ROOT / "config" / "mappings" / "siu.yaml").read_text()
        d.rules.write_text(adt)
        port = d.start()
        with MLLPConnection(port) as c:  # one connection, kept across reloads
            ack = c.request(make_message("RL-1"))
            self.assertEqual(ack.code, "AA", ack.raw)

            # A rule file that does not compile: the ADT rules stay.
            d.rules.write_text(adt + "\nthis is: [not valid\n")
            self.reload(d, "event=reload_failed")
            self.assertRegex(d.log(), r"level=error event=reload_failed .*keeping=previous_rules")
            ack = c.request(make_message("RL-2"))
            self.assertEqual(ack.code, "AA", ack.raw)

            # Rules without ADT: the next ADT message is unmatched.
            d.rules.write_text(siu)
            self.reload(d, "event=reload ")
            ack = c.request(make_message("RL-3"))
            self.assertEqual((ack.code, ack.err_code), ("AE", "200"), ack.raw)

            # And back.
            d.rules.write_text(adt)
            self.reload(d, "event=reload ")
            ack = c.request(make_message("RL-4"))
            self.assertEqual(ack.code, "AA", ack.raw)
        counts = d.control_id_counts()
        self.assertEqual({k: v for k, v in counts.items() if k.startswith(b"RL-")},
                         {b"RL-1": 1, b"RL-2": 1, b"RL-4": 1})
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main()
