"""MLLP over TLS and who may connect: a verified client gets its ACKs; plain
TCP to a TLS port, TLS 1.0/1.1, no client certificate, a certificate from
another CA and a name not allowed are each refused and counted, and the
daemon keeps answering good clients.  Sender binding: a certificate may only
speak for the MSH-3^MSH-4 it is bound to.  CIDR allowlist, connections per
IP, and the frame timeout that closes slow-loris peers.

Certificates are made for each run with the `openssl` command."""

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

from harness import Daemon, DaemonTestCase, frame, make_message, Ack, MLLPConnection


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def make_cert(d, ca, name, san):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    Path(d, f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            cwd=d)


class TLSDaemon(Daemon):
    """A daemon whose listener gets extra YAML lines (tls, senders, allow…)."""

    def __init__(self, testcase, listener_extra, **opts):
        super().__init__(testcase, **opts)
        self.listener_extra = listener_extra

    def config_text(self, port):
        text = super().config_text(port)
        lines = text.split("\n")
        at = next(i for i, l in enumerate(lines) if l.strip().startswith("idle_timeout_s:"))
        return "\n".join(lines[:at + 1] + self.listener_extra + lines[at + 1:])


def wait_log(daemon, needle, count=1, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.log().count(needle) >= count:
            return True
        time.sleep(0.05)
    return False


class TLSListener(DaemonTestCase):
    @classmethod
    def setUpClass(cls):
        if not shutil.which("openssl"):
            raise unittest.SkipTest("openssl command not installed")
        cls.pki = tempfile.mkdtemp(prefix="hl7bridge-pki-")
        d = cls.pki
        make_ca(d, "ca1")
        make_ca(d, "ca2")
        make_cert(d, "ca1", "server", "DNS:localhost,IP:127.0.0.1")
        make_cert(d, "ca1", "engine-1", "DNS:engine-1")
        make_cert(d, "ca1", "engine-3", "DNS:engine-3")
        make_cert(d, "ca2", "rogue", "DNS:engine-1")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.pki, True)

    def p(self, name):
        return str(Path(self.pki, name))

    def setUp(self):
        super().setUp()
        extra = [
            "    tls:",
            f"      cert_file: {self.p('server.pem')}",
            f"      key_file: {self.p('server.key')}",
            f"      client_ca_file: {self.p('ca1.pem')}",
            "      verify_client: true",
            "      allowed_names: [engine-1, engine-2]",
            "    senders:",
            "      engine-1: [EPIC^HOSP, EPIC^CLINIC]",
        ]
        self.daemon = TLSDaemon(self, extra)
        self.port = self.daemon.start()

    def client_ctx(self, cert=None, ca="ca1.pem", **versions):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.p(ca))
        if cert:
            ctx.load_cert_chain(self.p(f"{cert}.pem"), self.p(f"{cert}.key"))
        for k, v in versions.items():
            setattr(ctx, k, v)
        return ctx

    def tls_request(self, ctx, msg, server_hostname="localhost"):
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
            s.sendall(frame(msg))
            buf = b""
            while b"\x1c\r" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("closed before the ACK")
                buf += chunk
            return Ack(buf[buf.index(b"\x0b") + 1:buf.index(b"\x1c\r")])

    def assert_refused(self, ctx, why):
        before = self.daemon.log().count("event=mllp_tls_refused")
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError), msg=why):
            self.tls_request(ctx, make_message("REFUSED1", send_app="EPIC", send_fac="HOSP"))
        self.assertTrue(wait_log(self.daemon, "event=mllp_tls_refused", before + 1),
                        f"{why}: refusal not logged\n{self.daemon.log()}")
        self.assert_good_client_works()

    def assert_good_client_works(self, cid="GOOD"):
        ack = self.tls_request(self.client_ctx("engine-1"),
                               make_message(cid + str(time.monotonic_ns()), send_app="EPIC",
                                            send_fac="HOSP"))
        self.assertEqual(ack.code, "AA", ack.raw)

    def test_verified_client_gets_acks_and_messages_are_stored(self):
        ack = self.tls_request(self.client_ctx("engine-1"),
                               make_message("TLS0001", send_app="EPIC", send_fac="HOSP"))
        self.assertEqual((ack.code, ack.control_id_text), ("AA", "TLS0001"))
        self.assertEqual(self.daemon.count_control_id("TLS0001"), 1)
        self.assertIn("event=mllp_tls_established", self.daemon.log())

    def test_plain_tcp_to_tls_port_is_refused(self):
        with MLLPConnection(self.port) as c:
            c.send(make_message("PLAIN1"))
            self.assertTrue(c.closed_by_peer(5), "plain MLLP on a TLS port must be closed")
        self.assertTrue(wait_log(self.daemon, "reason=handshake_failed"), self.daemon.log())
        self.assertEqual(self.daemon.count_control_id("PLAIN1"), 0)
        self.assert_good_client_works()

    def test_tls_1_1_client_is_refused(self):
        ctx = self.client_ctx("engine-1")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        try:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        except ssl.SSLError:
            pass
        self.assert_refused(ctx, "TLS 1.1")

    def test_client_without_certificate_is_refused(self):
        self.assert_refused(self.client_ctx(None), "no client certificate")

    def test_certificate_from_another_ca_is_refused(self):
        self.assert_refused(self.client_ctx("rogue"), "other CA")

    def test_name_not_allowed_is_refused(self):
        before = self.daemon.log().count("reason=name_not_allowed")
        try:
            self.tls_request(self.client_ctx("engine-3"), make_message("ENG3", send_app="EPIC",
                                                                       send_fac="HOSP"))
            self.fail("engine-3 is not in allowed_names")
        except (ssl.SSLError, ConnectionError, OSError):
            pass
        self.assertTrue(wait_log(self.daemon, "reason=name_not_allowed", before + 1),
                        self.daemon.log())
        self.assertEqual(self.daemon.count_control_id("ENG3"), 0)
        self.assert_good_client_works()

    def test_sender_binding(self):
        ctx = self.client_ctx("engine-1")
        ok = self.tls_request(ctx, make_message("BIND1", send_app="EPIC", send_fac="CLINIC"))
        self.assertEqual(ok.code, "AA", ok.raw)
        bad = self.tls_request(ctx, make_message("BIND2", send_app="OTHER", send_fac="HOSP"))
        self.assertEqual(bad.code, "AR", bad.raw)
        self.assertEqual(bad.control_id_text, "BIND2")
        self.assertIsNotNone(bad.err_segment)
        self.assertEqual(self.daemon.count_control_id("BIND2"), 0)
        self.assertIn("event=sender_refused", self.daemon.log())


class WhoMayConnect(DaemonTestCase):
    def start(self, extra):
        self.daemon = TLSDaemon(self, extra)
        self.port = self.daemon.start()

    def test_address_outside_allow_list_is_refused_before_any_read(self):
        self.start(["    allow: [10.0.0.0/8, 192.168.0.0/16]"])
        with MLLPConnection(self.port) as c:
            c.send(make_message("DENIED1"))
            self.assertTrue(c.closed_by_peer(3))
        self.assertTrue(wait_log(self.daemon, "reason=not_allowed"), self.daemon.log())
        self.assertEqual(self.daemon.count_control_id("DENIED1"), 0)

    def test_address_inside_allow_list_is_served(self):
        self.start(["    allow: [10.0.0.0/8, 127.0.0.0/8]"])
        with MLLPConnection(self.port) as c:
            self.assertEqual(c.request(make_message("ALLOWED1")).code, "AA")

    def test_max_connections_per_ip(self):
        self.start(["    max_connections_per_ip: 2"])
        a, b = MLLPConnection(self.port), MLLPConnection(self.port)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertEqual(a.request(make_message("PERIP1")).code, "AA")
        self.assertEqual(b.request(make_message("PERIP2")).code, "AA")
        with MLLPConnection(self.port) as c:
            self.assertTrue(c.closed_by_peer(3), "third connection from one IP must be closed")
        self.assertTrue(wait_log(self.daemon, "reason=max_connections_per_ip"))
        self.assertEqual(a.request(make_message("PERIP3")).code, "AA")

    def test_slow_loris_frame_is_closed_by_frame_timeout(self):
        self.start(["    frame_timeout_s: 1"])
        msg = frame(make_message("SLOW1"))
        with MLLPConnection(self.port) as slow, MLLPConnection(self.port) as good:
            t0 = time.monotonic()
            closed = False
            for i in range(0, 40):
                try:
                    slow.send_raw(msg[i:i + 1])
                except OSError:
                    closed = True
                    break
                if slow.closed_by_peer(0.3):
                    closed = True
                    break
                # a well-behaved client keeps getting its ACKs meanwhile
                if i % 5 == 0:
                    self.assertEqual(good.request(make_message(f"FAST{i}")).code, "AA")
            self.assertTrue(closed, "a frame trickling in must be cut off")
            self.assertLess(time.monotonic() - t0, 5.0)
        self.assertIn("event=mllp_frame_timeout", self.daemon.log())
        self.assertEqual(self.daemon.count_control_id("SLOW1"), 0)


if __name__ == "__main__":
    unittest.main()
