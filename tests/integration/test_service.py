"""Operating hl7bridge as an installed service: it runs from any working
directory with the rules compiled into it, relative paths in a configuration
file lead into that file's directory, and `check --dump` shows where."""

import json
import os
import re
import shutil
import signal
import socket
import stat
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid
from pathlib import Path

from harness import (ROOT, START_TIMEOUT_S, USERS_CSV, Daemon, MLLPConnection, free_port,
                     make_message, require_binary)


def run_bin(tc, *args, cwd, timeout=30):
    try:
        return subprocess.run([str(require_binary(tc)), *args], cwd=str(cwd),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, text=True)
    except subprocess.TimeoutExpired:
        tc.fail(f"hl7bridge {' '.join(args)} did not finish within {timeout} s")


class RelativeDaemon(Daemon):
    """A daemon whose configuration names its files relative to itself and
    no mapping rules (the built-in ones; only the users table that resolves
    make_message's operator), started from an unrelated empty directory."""

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
            f"mapping: {{lookups: {{users: {{file: {USERS_CSV}}}}}}}",
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


# ---- the service manager's notifications (sd_notify) ----------------------


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET: a path in
    a temporary directory, or an abstract name ("@…")."""

    def __init__(self, tc, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        tc.addCleanup(self.sock.close)
        if abstract:
            self.name = f"@hl7bridge-it-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            self.sock.bind("\0" + self.name[1:])
        else:
            d = tempfile.mkdtemp(prefix="hl7bridge-it-notify-")
            tc.addCleanup(shutil.rmtree, d, True)
            self.name = os.path.join(d, "notify")
            self.sock.bind(self.name)
        self.seen = []  # every datagram, as a list of lines

    def recv(self, timeout):
        """The next datagram's lines, or None after `timeout` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        lines = data.decode().split("\n")
        self.seen.append(lines)
        return lines

    def wait_for(self, line, timeout=START_TIMEOUT_S):
        """Datagrams until one holds `line` exactly; that one, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(deadline - time.monotonic())
            if msg is not None and line in msg:
                return msg
        return None

    def collect(self, seconds):
        """Every datagram that arrives within `seconds`."""
        out, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.recv(deadline - time.monotonic())
            if msg is not None:
                out.append(msg)
        return out


def value(msg, key):
    for line in msg:
        if line.startswith(key + "="):
            return line[len(key) + 1:]
    return None


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


class NotifiedDaemon(Daemon):
    """A daemon run as systemd runs a Type=notify service: $NOTIFY_SOCKET
    set (and $WATCHDOG_USEC when asked).  Start-up waits for READY=1 and
    notes, at that moment, whether the listener accepts and the store is
    there."""

    def __init__(self, testcase, abstract=False, watchdog_usec=None, watchdog_pid=None):
        super().__init__(testcase)
        self.notify = NotifySocket(testcase, abstract)
        self.env = dict(os.environ, NOTIFY_SOCKET=self.notify.name)
        if watchdog_usec:
            self.env["WATCHDOG_USEC"] = str(watchdog_usec)
        if watchdog_pid:
            self.env["WATCHDOG_PID"] = str(watchdog_pid)
        self.ready = None
        self.ready_state = None

    def _wait_started(self, port):
        self.ready = self.notify.wait_for("READY=1")
        if self.ready is None:
            return False, "no READY=1 on the notification socket"
        self.ready_state = (accepts(port), self.db_path.exists())
        return super()._wait_started(port)


class ServiceNotifications(unittest.TestCase):

    def test_ready_once_listening_and_the_store_is_open(self):
        d = NotifiedDaemon(self)
        d.start()
        self.assertEqual(d.ready_state, (True, True), "READY=1 before listening / store open")
        status = value(d.ready, "STATUS")
        self.assertIsNotNone(status, d.ready)
        self.assertTrue(status.startswith("ready: 1 listener, 0 messages"), status)
        self.assertNotIn("\n", status)
        with d.connect() as c:
            self.assertEqual(c.request(make_message("NOTIFY1")).code, "AA")
        d.assert_stops_cleanly()

    def test_abstract_socket_name(self):
        d = NotifiedDaemon(self, abstract=True)
        d.start()
        self.assertEqual(d.ready_state, (True, True))
        d.assert_stops_cleanly()

    def test_reloading_then_ready_around_sighup_and_stopping_on_sigterm(self):
        d = NotifiedDaemon(self)
        d.start()
        before = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        reloading = d.notify.wait_for("RELOADING=1")
        after = time.monotonic()
        self.assertIsNotNone(reloading, d.notify.seen)
        usec = int(value(reloading, "MONOTONIC_USEC"))
        # CLOCK_MONOTONIC, the clock of Python's time.monotonic()
        self.assertLessEqual(before * 1e6 - 1e6, usec)
        self.assertLessEqual(usec, after * 1e6 + 1e6)
        again = d.notify.wait_for("READY=1")
        self.assertIsNotNone(again, d.notify.seen)
        self.assertTrue(value(again, "STATUS").startswith("ready:"), again)
        d.proc.send_signal(signal.SIGTERM)
        stopping = d.notify.wait_for("STOPPING=1")
        self.assertIsNotNone(stopping, d.notify.seen)
        self.assertEqual(d.proc.wait(timeout=40), 0)

    def test_no_keepalive_for_another_process(self):
        d = NotifiedDaemon(self, watchdog_usec=200000, watchdog_pid=1)
        d.start()
        got = d.notify.collect(1.5)
        self.assertFalse(any("WATCHDOG=1" in m for m in got), got)
        d.assert_stops_cleanly()

    def test_watchdog_only_while_the_store_writer_is_alive(self):
        d = NotifiedDaemon(self, watchdog_usec=400000)
        d.start()
        pings = [m for m in d.notify.collect(3) if "WATCHDOG=1" in m]
        self.assertGreaterEqual(len(pings), 3, d.notify.seen)
        # Wedge the store writer: another connection holds the write lock,
        # so the commit of the next message waits in its busy handler.
        lock = sqlite3.connect(str(d.db_path), timeout=1, isolation_level=None)
        self.addCleanup(lock.close)
        lock.execute("BEGIN IMMEDIATE")
        c = d.connect(timeout=40)
        c.send(make_message("WEDGED1"))
        deadline = time.monotonic() + 15
        stuck = None
        while stuck is None and time.monotonic() < deadline:
            msg = d.notify.recv(deadline - time.monotonic())
            if msg and "store writer busy" in (value(msg, "STATUS") or ""):
                stuck = msg
        self.assertIsNotNone(stuck, f"STATUS never said the writer was stuck: {d.notify.seen}")
        self.assertNotIn("WATCHDOG=1", stuck)
        during = d.notify.collect(1.5)
        self.assertTrue(during, "no STATUS while stuck")
        self.assertFalse(any("WATCHDOG=1" in m for m in during), during)
        lock.execute("ROLLBACK")
        self.assertEqual(c.recv_ack().code, "AA")
        self.assertIsNotNone(d.notify.wait_for("WATCHDOG=1", 10), "no keep-alive after recovery")
        d.assert_stops_cleanly()


# ---- make install, the unit, make deb ---------------------------------------


def make(tc, *args, timeout=300):
    try:
        r = subprocess.run(["make", "--no-print-directory", *args], cwd=str(ROOT),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout, text=True)
    except subprocess.TimeoutExpired:
        tc.fail(f"make {' '.join(args)} did not finish within {timeout} s")
    tc.assertEqual(r.returncode, 0, r.stdout + r.stderr)
    return r


def verify_unit(tc, unit_text, binary):
    """systemd-analyze verify on `unit_text` with ExecStart pointing at
    `binary` (verify wants the executable to exist).  Returns the result."""
    if not shutil.which("systemd-analyze"):
        tc.skipTest("systemd-analyze missing (Debian package systemd, scripts/deps.sh test)")
    d = Path(tempfile.mkdtemp(prefix="hl7bridge-it-unit-"))
    tc.addCleanup(shutil.rmtree, d, True)
    text = unit_text.replace("/usr/local/bin/hl7bridge", str(binary))
    text = text.replace("/usr/bin/hl7bridge", str(binary))
    (d / "hl7bridge.service").write_text(text)
    return subprocess.run(["systemd-analyze", "verify", str(d / "hl7bridge.service")],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60)


def unit_settings(text):
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


class Install(unittest.TestCase):

    def setUp(self):
        require_binary(self)
        self.root = Path(tempfile.mkdtemp(prefix="hl7bridge-it-install-"))
        self.addCleanup(shutil.rmtree, self.root, True)

    def test_install_layout_and_existing_configuration_kept(self):
        make(self, "install", f"DESTDIR={self.root}", "PREFIX=/opt/hb", "SYSCONFDIR=/etc",
             "LOCALSTATEDIR=/srv")
        r = self.root
        self.assertTrue(os.access(r / "opt/hb/bin/hl7bridge", os.X_OK))
        conf = r / "etc/hl7bridge/hl7bridge.yaml"
        text = conf.read_text()
        self.assertIn("path: /srv/lib/hl7bridge/hl7bridge.db", text)
        self.assertNotIn("../var/", text)
        for f in ("adt.yaml", "siu.yaml", "access-audit.yaml"):
            self.assertTrue((r / "opt/hb/share/hl7bridge/mappings" / f).is_file(), f)
        self.assertTrue((r / "srv/lib/hl7bridge").is_dir())
        unit = (r / "opt/hb/lib/systemd/system/hl7bridge.service").read_text()
        s = unit_settings(unit)
        self.assertEqual(s["ExecStart"], ["/opt/hb/bin/hl7bridge run -c /etc/hl7bridge/hl7bridge.yaml"])
        self.assertEqual(s["ReadWritePaths"], ["/srv/lib/hl7bridge"])
        self.assertEqual(s["WorkingDirectory"], ["/srv/lib/hl7bridge"])
        # The installed configuration is valid as it stands.
        c = run_bin(self, "check", "-c", str(conf), cwd=self.root)
        self.assertEqual(c.returncode, 0, c.stdout + c.stderr)
        # An administrator's configuration is never overwritten.
        conf.write_text("# edited\n" + text)
        make(self, "install", f"DESTDIR={self.root}", "PREFIX=/opt/hb", "SYSCONFDIR=/etc",
             "LOCALSTATEDIR=/srv")
        self.assertTrue(conf.read_text().startswith("# edited\n"))

    def test_unit_is_notify_hardened_and_verifies(self):
        make(self, "install", f"DESTDIR={self.root}")
        unit = (self.root / "usr/local/lib/systemd/system/hl7bridge.service").read_text()
        s = unit_settings(unit)
        self.assertEqual(s["Type"], ["notify"])
        self.assertIn("WatchdogSec", s)
        for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                          ("PrivateTmp", "yes"), ("ProtectHome", "yes"),
                          ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
                          ("ReadWritePaths", "/var/lib/hl7bridge")):
            self.assertEqual(s.get(key), [want], key)
        binary = self.root / "usr/local/bin/hl7bridge"
        r = verify_unit(self, unit, binary)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertEqual(r.stdout.strip(), "", r.stdout)
        # and verify does refuse a broken unit
        bad = verify_unit(self, unit.replace("Type=notify", "Type=notifyy"), binary)
        self.assertNotEqual((bad.returncode, bad.stdout.strip()), (0, ""), bad.stdout)


class DebianPackage(unittest.TestCase):
    """`make deb`, then the package taken apart: its files, conffiles,
    Depends (every shared library the binary loads comes from a package it
    names), maintainer scripts, its unit verified, the packaged binary run on
    the packaged configuration until READY=1; and installed, removed and
    purged by dpkg in a throwaway root (maintainer scripts run chrooted in
    it, with a stand-in adduser; no systemd there, so the service is not
    started by dpkg)."""

    @classmethod
    def setUpClass(cls):
        for tool in ("dpkg-deb", "dpkg-shlibdeps"):
            if not shutil.which(tool):
                raise unittest.SkipTest(f"{tool} missing (Debian package dpkg-dev)")
        cls.deb = None
        r = subprocess.run(["make", "--no-print-directory", "deb"], cwd=str(ROOT),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=300, text=True)
        cls.make_output = r.stdout
        if r.returncode == 0:
            cls.deb = ROOT / r.stdout.strip().splitlines()[-1]

    def setUp(self):
        require_binary(self)
        self.assertIsNotNone(self.deb, f"make deb failed:\n{self.make_output}")
        self.assertTrue(self.deb.is_file(), self.make_output)
        self.x = Path(tempfile.mkdtemp(prefix="hl7bridge-it-deb-"))
        self.addCleanup(shutil.rmtree, self.x, True)
        subprocess.run(["dpkg-deb", "-x", str(self.deb), str(self.x / "root")], check=True)
        subprocess.run(["dpkg-deb", "-e", str(self.deb), str(self.x / "DEBIAN")], check=True)

    def field(self, name):
        return subprocess.run(["dpkg-deb", "-f", str(self.deb), name], check=True,
                              stdout=subprocess.PIPE, text=True).stdout.strip()

    def test_contents_conffiles_and_scripts(self):
        listing = subprocess.run(["dpkg-deb", "-c", str(self.deb)], check=True,
                                 stdout=subprocess.PIPE, text=True).stdout
        for path in ("./usr/bin/hl7bridge", "./lib/systemd/system/hl7bridge.service",
                     "./etc/hl7bridge/hl7bridge.yaml", "./usr/share/hl7bridge/mappings/adt.yaml"):
            self.assertIn(path, listing)
        for line in listing.splitlines():
            self.assertIn(" root/root ", line, line)
        self.assertEqual((self.x / "DEBIAN/conffiles").read_text().split(),
                         ["/etc/hl7bridge/hl7bridge.yaml"])
        post = (self.x / "DEBIAN/postinst").read_text()
        self.assertIn("adduser --system --group --home /var/lib/hl7bridge", post)
        self.assertIn("install -d -m 0750 -o hl7bridge -g hl7bridge /var/lib/hl7bridge", post)
        for script in ("postinst", "prerm", "postrm"):
            p = self.x / "DEBIAN" / script
            self.assertTrue(os.access(p, os.X_OK), script)
            self.assertEqual(subprocess.run(["sh", "-n", str(p)]).returncode, 0, script)
        self.assertEqual(self.field("Package"), "hl7bridge")

    def test_depends_names_every_library_the_binary_loads(self):
        depends = self.field("Depends")
        names = {d.strip().split(" ")[0] for d in depends.split(",")}
        for lib in ("libcurl4", "libssl3", "libyaml-0-2", "libsqlite3-0", "libmicrohttpd12",
                    "libjansson4", "libc6", "adduser"):
            self.assertIn(lib, names, depends)
        binary = self.x / "root/usr/bin/hl7bridge"
        needed = subprocess.run(["objdump", "-p", str(binary)], check=True,
                                stdout=subprocess.PIPE, text=True).stdout
        sonames = [l.split()[1] for l in needed.splitlines() if l.strip().startswith("NEEDED")]
        self.assertTrue(sonames)
        for so in sonames:
            owner = subprocess.run(["dpkg", "-S", f"*/{so}"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True).stdout
            pkgs = {l.split(":")[0] for l in owner.splitlines() if l}
            self.assertTrue(pkgs & names, f"{so} comes from {pkgs}, not in Depends: {depends}")

    def make_root(self):
        """A throwaway root dpkg can install into: an empty dpkg database,
        dash and the few tools the maintainer scripts call (with their
        libraries), /dev/null, and a stand-in for adduser that only appends
        the system user and group to the root's /etc/passwd and /etc/group."""
        r = self.x / "sysroot"
        for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers",
                  "usr/bin", "usr/sbin", "bin", "etc", "tmp", "dev"):
            (r / d).mkdir(parents=True, exist_ok=True)
        for f in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
            (r / f).touch()
        tools = [shutil.which(t) for t in ("dash", "install", "chgrp", "chmod", "getent")]
        self.assertTrue(all(tools), tools)
        for t in tools:
            shutil.copy(t, r / "usr/bin" / os.path.basename(t))
        os.symlink("dash", r / "usr/bin/sh")
        os.symlink("../usr/bin/sh", r / "bin/sh")
        libs = set()
        for t in tools:
            out = subprocess.run(["ldd", t], stdout=subprocess.PIPE, text=True).stdout
            libs.update(re.findall(r"(/\S+\.so[.\d]*)", out))
        for lib in libs:
            dst = r / lib.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(os.path.realpath(lib), dst)
        (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (r / "etc/group").write_text("root:x:0:\n")
        adduser = r / "usr/sbin/adduser"
        adduser.write_text("#!/bin/sh\n"
                           "for a; do name=$a; done\n"
                           'echo "$name:x:64999:64999::/var/lib/$name:/usr/sbin/nologin" >> /etc/passwd\n'
                           'echo "$name:x:64999:" >> /etc/group\n'
                           'echo "adduser $*" >> /tmp/adduser.log\n')
        adduser.chmod(0o755)
        try:
            os.mknod(r / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except OSError:
            self.skipTest("cannot make /dev/null in a throwaway root (needs root)")
        return r

    def dpkg(self, root, *args):
        env = dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin")
        return subprocess.run(["dpkg", f"--root={root}", "--force-depends", *args],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=120, env=env)

    def test_dpkg_installs_removes_and_purges_in_a_throwaway_root(self):
        if os.geteuid() != 0:
            self.skipTest("dpkg --root with maintainer scripts needs root (chroot)")
        r = self.make_root()
        inst = self.dpkg(r, "-i", str(self.deb))
        self.assertEqual(inst.returncode, 0, inst.stdout)
        st = self.dpkg(r, "-s", "hl7bridge").stdout
        self.assertIn("Status: install ok installed", st)
        self.assertIn("Conffiles:\n /etc/hl7bridge/hl7bridge.yaml", st)
        # postinst: the system user, its state directory, the configuration
        # readable by its group only
        self.assertIn("adduser --system --group --home /var/lib/hl7bridge",
                      (r / "tmp/adduser.log").read_text())
        self.assertIn("hl7bridge:x:64999:64999:", (r / "etc/passwd").read_text())
        state = (r / "var/lib/hl7bridge").stat()
        self.assertEqual((state.st_uid, state.st_gid, state.st_mode & 0o777), (64999, 64999, 0o750))
        conf = (r / "etc/hl7bridge/hl7bridge.yaml").stat()
        self.assertEqual((conf.st_gid, conf.st_mode & 0o777), (64999, 0o640))
        self.assertTrue(os.access(r / "usr/bin/hl7bridge", os.X_OK))
        # A reinstall (upgrade path) keeps the user (no second adduser).
        again = self.dpkg(r, "-i", str(self.deb))
        self.assertEqual(again.returncode, 0, again.stdout)
        self.assertEqual((r / "tmp/adduser.log").read_text().count("adduser"), 1)
        # remove keeps the configuration (a conffile) and the store; purge
        # drops the configuration and still keeps the store (patient data).
        (r / "var/lib/hl7bridge/hl7bridge.db").write_text("store")
        rm = self.dpkg(r, "-r", "hl7bridge")
        self.assertEqual(rm.returncode, 0, rm.stdout)
        self.assertFalse((r / "usr/bin/hl7bridge").exists())
        self.assertTrue((r / "etc/hl7bridge/hl7bridge.yaml").exists())
        purge = self.dpkg(r, "-P", "hl7bridge")
        self.assertEqual(purge.returncode, 0, purge.stdout)
        self.assertFalse((r / "etc/hl7bridge/hl7bridge.yaml").exists())
        self.assertTrue((r / "var/lib/hl7bridge/hl7bridge.db").exists())

    def test_packaged_unit_verifies(self):
        unit = (self.x / "root/lib/systemd/system/hl7bridge.service").read_text()
        self.assertIn("ExecStart=/usr/bin/hl7bridge run -c /etc/hl7bridge/hl7bridge.yaml", unit)
        r = verify_unit(self, unit, self.x / "root/usr/bin/hl7bridge")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, ""), r.stdout)

    def test_packaged_binary_starts_on_the_packaged_configuration(self):
        conf = (self.x / "root/etc/hl7bridge/hl7bridge.yaml").read_text()
        self.assertIn("path: /var/lib/hl7bridge/hl7bridge.db", conf)
        state = self.x / "state"
        port, mport = free_port(), free_port()
        conf = (conf.replace("/var/lib/hl7bridge/", f"{state}/")
                    .replace("0.0.0.0:2575", f"127.0.0.1:{port}")
                    .replace("127.0.0.1:9575", f"127.0.0.1:{mport}"))
        d = NotifiedDaemon(self)
        d.bin = self.x / "root/usr/bin/hl7bridge"
        d.db_path = state / "hl7bridge.db"
        d.cwd = self.x
        d.config_text = lambda p: conf
        d.start(port)
        self.assertEqual(d.ready_state, (True, True))
        with d.connect() as c:
            self.assertEqual(c.request(make_message("PACKAGED1")).code, "AA")
        d.assert_stops_cleanly()


# ---- hl7bridge backup ----------------------------------------------------------


class Backup(unittest.TestCase):

    def test_backup_during_load_holds_every_acknowledged_message_and_restores(self):
        d = Daemon(self)
        d.start()
        acked, errors = [], []
        stop = threading.Event()

        def sender(prefix):
            try:
                with MLLPConnection(d.port, timeout=30) as c:
                    for i in range(100000):
                        if stop.is_set():
                            return
                        cid = f"{prefix}{i:06d}"
                        if c.request(make_message(cid)).code == "AA":
                            acked.append(cid)
            except Exception as e:  # reported by the test, not lost in the thread
                errors.append(repr(e))

        threads = [threading.Thread(target=sender, args=(p,)) for p in ("BKA", "BKB")]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 60
            while len(acked) < 300 and time.monotonic() < deadline and not errors:
                time.sleep(0.05)
            self.assertGreaterEqual(len(acked), 300, errors)
            before = list(acked)  # acknowledged before the backup began
            target = d.dir / "backup" / "hl7bridge-backup.db"
            target.parent.mkdir()
            r = run_bin(self, "backup", "-c", str(d.config_path), str(target), cwd=d.dir,
                        timeout=120)
            during = len(acked)
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        m = re.fullmatch(r"(\S+): (\d+) bytes, (\d+) messages \(from (\S+)\)\n", r.stdout)
        self.assertIsNotNone(m, r.stdout)
        self.assertEqual(int(m.group(2)), target.stat().st_size)
        self.assertEqual(target.stat().st_mode & 0o777, 0o600)
        self.assertFalse(Path(str(target) + ".partial").exists())
        self.assertFalse(Path(str(target) + "-wal").exists())
        con = sqlite3.connect(str(target))
        try:
            self.assertEqual(con.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            self.assertEqual(con.execute("PRAGMA journal_mode").fetchone()[0], "delete")
            ids = {row[0] for row in con.execute("SELECT control_id FROM messages")}
        finally:
            con.close()
        self.assertEqual(int(m.group(3)), len(ids))
        self.assertEqual(set(before) - ids, set(), "acknowledged messages missing")
        self.assertLessEqual(len(ids), len(acked))
        print(f"\nbackup: {len(before)} acknowledged before, {len(ids)} in the copy, "
              f"{len(acked) - during} more acknowledged after it", file=sys.stderr)

        # Never over an existing file.
        again = run_bin(self, "backup", "-c", str(d.config_path), str(target), cwd=d.dir)
        self.assertEqual(again.returncode, 1)
        self.assertIn("exists", again.stderr)
        self.assertEqual(int(m.group(2)), target.stat().st_size)

        # Restore (README): stop, put the copy in place of the store, start.
        d.assert_stops_cleanly()
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(d.db_path) + suffix)
            if p.exists():
                p.unlink()
        shutil.copyfile(target, d.db_path)
        d.start()
        restored = {r[0].decode() for r in d.query("SELECT control_id FROM messages")}
        self.assertEqual(restored, ids)
        # A re-sent message from before the backup is recognised as stored.
        with d.connect() as c:
            self.assertEqual(c.request(make_message(before[0])).code, "AA")
            self.assertEqual(c.request(make_message("AFTERRESTORE1")).code, "AA")
        n = d.query("SELECT COUNT(*) FROM messages WHERE control_id = ?", (before[0],))[0][0]
        self.assertEqual(n, 1)
        d.assert_stops_cleanly()


# ---- Prometheus alerting rules and the Grafana dashboard ------------------------


KIT = ROOT / "packaging"
RULES = KIT / "prometheus" / "hl7bridge-alerts.yaml"
RULE_TESTS = KIT / "prometheus" / "hl7bridge-alerts.test.yaml"
DASHBOARD = KIT / "grafana" / "hl7bridge-dashboard.json"


def dashboard_queries():
    dash = json.loads(DASHBOARD.read_text())
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            out.append(q["query"])
    return out


class MonitoringKit(unittest.TestCase):

    def promtool(self, *args, cwd):
        if not shutil.which("promtool"):
            self.skipTest("promtool missing (Debian package prometheus)")
        return subprocess.run(["promtool", *args], cwd=str(cwd), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=120)

    def test_promtool_checks_and_exercises_the_alerting_rules(self):
        r = self.promtool("check", "rules", RULES.name, cwd=RULES.parent)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("SUCCESS: 6 rules found", r.stdout)
        r = self.promtool("test", "rules", RULE_TESTS.name, cwd=RULES.parent)
        self.assertEqual(r.returncode, 0, r.stdout)
        alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M))
        self.assertEqual(alerts, {"HL7BridgeNodeDown", "HL7BridgeNackRateHigh",
                                  "HL7BridgeAckLatencyHigh", "HL7BridgeSinkFailing",
                                  "HL7BridgeStoreNotWritable",
                                  "HL7BridgeUndeliveredBacklogGrowing"})
        tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
        self.assertEqual(tested, alerts)
        # The rule tests can fail: a NACK threshold moved breaks them.
        tmp = Path(tempfile.mkdtemp(prefix="hl7bridge-it-rules-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        text = RULES.read_text()
        self.assertIn(") > 0.2\n", text)
        (tmp / RULES.name).write_text(text.replace(") > 0.2\n", ") > 0.5\n"))
        shutil.copy(RULE_TESTS, tmp / RULE_TESTS.name)
        r = self.promtool("test", "rules", RULE_TESTS.name, cwd=tmp)
        self.assertNotEqual(r.returncode, 0, r.stdout)

    def test_rules_and_dashboard_name_only_metrics_the_daemon_exports(self):
        from test_metrics import MetricsDaemon
        d = MetricsDaemon(self)
        d.start()
        with d.connect() as c:
            self.assertEqual(c.request(make_message("KIT1")).code, "AA")
        code, _, body = d.get("/metrics")
        self.assertEqual(code, 200)
        exported = set()
        for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", body, re.M):
            exported.add(name)
            if kind == "histogram":
                exported.update({name + "_bucket", name + "_sum", name + "_count"})
        queries = dashboard_queries()
        self.assertGreaterEqual(len(queries), 15)
        used = set()
        for q in queries + [RULES.read_text()]:
            used.update(re.findall(r"\bhl7bridge_[a-z0-9_]+", q))
        self.assertGreaterEqual(len(used), 15, used)
        self.assertEqual(used - exported, set(), "names the daemon does not export")
        # Every dashboard query names at least one of them (no `up` or other
        # series the daemon does not provide).
        for q in queries:
            self.assertRegex(q, r"\bhl7bridge_[a-z0-9_]+", q)
            self.assertNotRegex(q, r"\bup\{", q)
        d.assert_stops_cleanly()


class Upgrade(unittest.TestCase):

    def test_a_store_from_a_newer_version_is_refused_with_a_clear_message(self):
        d = Daemon(self)
        d.start()
        d.assert_stops_cleanly()
        con = sqlite3.connect(str(d.db_path))
        con.execute("INSERT INTO schema_version (version, applied_ms) VALUES (999, 0)")
        con.commit()
        con.close()
        r = subprocess.run([str(d.bin), "run", "-c", str(d.config_path)], cwd=str(d.dir),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertRegex(r.stdout, r"event=store_open_failed .*database schema 999 is newer "
                                   r"than this build \(\d+\)")
        self.assertNotIn("event=listening", r.stdout)
