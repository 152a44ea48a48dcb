"""A throwaway PostgreSQL server for the integration tests.

PgServer().start() runs initdb in a temporary directory as an unprivileged
user (tests run as root in CI and PostgreSQL refuses to run as root), starts
the server on a free 127.0.0.1 port with no Unix socket, password
authentication (scram) for TCP, and the server's default durability
settings (fsync, synchronous_commit on).  stop() / start_again() stop and
start the same cluster (server restart under load); close() stops it and
removes the directory.  psql() runs SQL as the superuser and returns the
rows.  A watcher process stops the server and removes the directory when
the test process dies without close() (killed, or a broken pipe when its
output is cut short): pg_ctl's server outlives its parent otherwise.

Binaries come from Debian's postgresql package (scripts/deps.sh test);
available() says whether they are there."""

import atexit
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

PG_BIN = Path(os.environ.get("HL7BRIDGE_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "nobody"
SUPERUSER = "hb"
PASSWORD = "hb-test-secret"
PASSWORD_ENV = "HB_TEST_PG_PASSWORD"   # store.password: ${HB_TEST_PG_PASSWORD}


# Reads stdin until the test process is gone (EOF), then stops the server
# and removes its directory.  argv: pg_ctl, data dir, dir, run-as prefix.
_WATCHER = """
import shutil, subprocess, sys
sys.stdin.buffer.read()
subprocess.run(sys.argv[4:] + [sys.argv[1], "-D", sys.argv[2], "-m", "immediate", "-w", "stop"],
               stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
shutil.rmtree(sys.argv[3], True)
"""


def available():
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists() and \
        shutil.which("psql") is not None


def start_or_skip():
    """A started server for a test module; skips the module, saying what to
    install, when the server binaries are absent."""
    if not available():
        raise unittest.SkipTest(
            f"PostgreSQL server binaries not found in {PG_BIN} (Debian package "
            "postgresql; scripts/deps.sh test installs it)")
    return PgServer().start()


_shared = []


def shared():
    """One started server for the whole test process (the suites that run on
    both stores share it, each daemon in a database of its own), stopped at
    exit; PASSWORD_ENV is set so that every daemon and command the tests run
    finds the password.  Skips like start_or_skip()."""
    if not _shared:
        srv = start_or_skip()
        atexit.register(srv.close)
        os.environ[PASSWORD_ENV] = PASSWORD
        _shared.append(srv)
    return _shared[0]


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self):
        self.dir = None
        self.port = None
        self.as_root = os.geteuid() == 0
        self._watcher = None

    def _run(self, argv, timeout=120, check=True, env=None):
        if self.as_root:
            argv = ["runuser", "-u", PG_USER, "--"] + argv
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=check, env=env)

    def start(self):
        self.dir = Path(tempfile.mkdtemp(prefix="hl7bridge-pg-"))
        data = self.dir / "data"
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_root:
            pw = pwd.getpwnam(PG_USER)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o700)
        os.chmod(pwfile, 0o600)
        self._watch()
        self._run([str(PG_BIN / "initdb"), "-D", str(data), "-U", SUPERUSER,
                   "--auth-local=trust", "--auth-host=scram-sha-256",
                   f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8"])
        self.port = _free_port()
        self.start_again()
        return self

    def _watch(self):
        prefix = ["runuser", "-u", PG_USER, "--"] if self.as_root else []
        self._watcher = subprocess.Popen(
            [sys.executable, "-c", _WATCHER, str(PG_BIN / "pg_ctl"), str(self.dir / "data"),
             str(self.dir)] + prefix, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)

    def standby(self):
        """A streaming standby of this server, started on a free port of its
        own: pg_basebackup -R (replication as the superuser over TCP, which
        initdb's pg_hba.conf allows) into a directory inside this one.  It
        is asynchronous until the primary sets synchronous_standby_names;
        promote() makes it a primary.  Its close() stops it and removes its
        directory."""
        sb = PgServer()
        sb.dir = self.dir / "standby"
        sb.dir.mkdir(mode=0o700)
        if self.as_root:
            pw = pwd.getpwnam(PG_USER)
            os.chown(sb.dir, pw.pw_uid, pw.pw_gid)
        sb._watch()
        self._run([str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port),
                   "-U", SUPERUSER, "-D", str(sb.dir / "data"), "-R", "-X", "stream", "-c", "fast"],
                  env=dict(os.environ, PGPASSWORD=PASSWORD))
        sb.port = _free_port()
        sb.start_again()
        return sb

    def promote(self):
        """pg_ctl promote: a standby becomes a primary (waits until it is)."""
        r = self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-w", "-t", "60",
                       "promote"], check=False)
        if r.returncode != 0:
            raise RuntimeError("pg_ctl promote failed: " + r.stderr.decode(errors="replace"))

    def start_again(self):
        data = self.dir / "data"
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                "-c unix_socket_directories='' -c max_connections=40")
        r = self._run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"),
                       "-o", opts, "-w", "-t", "60", "start"], check=False)
        if r.returncode != 0:
            raise RuntimeError("pg_ctl start failed: " + r.stderr.decode(errors="replace") +
                               self.log())

    def stop(self, mode="fast"):
        if self.dir is None:
            return
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", mode, "-w",
                   "-t", "60", "stop"], check=False)

    def close(self):
        if self.dir is None:
            return
        self.stop("immediate")
        shutil.rmtree(self.dir, True)
        self.dir = None
        if self._watcher is not None:
            self._watcher.kill()   # its work is done
            self._watcher.wait(10)
            self._watcher = None

    def log(self):
        try:
            return (self.dir / "log").read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def url(self, db="postgres", user=SUPERUSER, extra=""):
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}{extra}"

    def psql(self, sql, db="postgres"):
        """Runs SQL as the superuser; returns rows as lists of strings."""
        env = dict(os.environ, PGPASSWORD=PASSWORD)
        r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                            "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER,
                            "-d", db, "-c", sql],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"psql: {r.stderr.decode(errors='replace')}")
        out = r.stdout.decode()
        return [line.split("\t") for line in out.splitlines() if line != ""]

    def create_db(self, name):
        self.psql(f"CREATE DATABASE {name}")
        return name
