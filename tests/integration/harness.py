"""Shared helpers of hl7bridge's integration tests.

Starts the real binary on a free loopback port with a temporary store and a
generated YAML configuration, talks MLLP to it, parses ACKs with python-hl7
and reads the SQLite store.  Run by Debian's /usr/bin/python3 (python3-hl7):

    /usr/bin/python3 -m unittest discover -s tests/integration -p 'test_*.py' -v

Environment: HL7BRIDGE_BIN (default build/hl7bridge), LOADGEN_BIN (default
build/bench/loadgen), HL7BRIDGE_CORPUS (default ../shared/corpus); relative
paths are taken from the project root.
"""

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import hl7

import pgserver

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "integration"
# The users table of every generated configuration: make_message's operator
# (EVN-5 HB01), the benchmark fixture's (JSMITH) and the SMS fixtures'
# scheduler (SCH-20 N0001) resolve to UPNs.
USERS_CSV = FIXTURES / "users.csv"

SB, EB, CR = b"\x0b", b"\x1c", b"\r"
BOM = b"\xef\xbb\xbf"

# HL7 table 0357 error codes that make sense for a message we reject:
# 100 segment sequence, 101 required field missing, 102 data type,
# 103 table value not found, 200 unsupported message type, 201 unsupported
# event, 202 unsupported processing id, 203 unsupported version,
# 207 application internal error.  (0 is "accepted"; 204-206 are about keys
# and records, not about malformed input.)
MEANINGFUL_0357 = {"100", "101", "102", "103", "200", "201", "202", "203", "207"}

START_TIMEOUT_S = 15
STOP_TIMEOUT_S = 40  # the daemon's own drain deadline is 30 s
IO_TIMEOUT_S = 10


def _from_root(value):
    p = Path(value)
    return p if p.is_absolute() else ROOT / p


def binary_path():
    return _from_root(os.environ.get("HL7BRIDGE_BIN", "build/hl7bridge"))


def loadgen_path():
    return _from_root(os.environ.get("LOADGEN_BIN", "build/bench/loadgen"))


def corpus_dir():
    """The shared corpus, or None when it is not there."""
    p = _from_root(os.environ.get("HL7BRIDGE_CORPUS", "../shared/corpus"))
    return p if p.is_dir() else None


def require_binary(testcase):
    b = binary_path()
    if not (b.is_file() and os.access(b, os.X_OK)):
        testcase.fail(f"hl7bridge binary not found at {b} (build it with `make`, or set HL7BRIDGE_BIN)")
    return b


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- HL7 bytes ---------------------------------------------------------------


def frame(msg: bytes) -> bytes:
    return SB + msg + EB + CR


def strip_bom(data: bytes) -> bytes:
    return data[3:] if data.startswith(BOM) else data


def first_segment(data: bytes) -> bytes:
    data = strip_bom(data).lstrip(b"\r\n")
    m = re.search(rb"[\r\n]", data)
    return data[: m.start()] if m else data


def header_fields(seg: bytes):
    """Fields of an MSH/BHS/FHS segment split on its own field separator:
    result[n] is field n in HL7 numbering (result[1] is the separator)."""
    if len(seg) < 4:
        return [seg]
    sep = seg[3:4]
    parts = seg.split(sep)
    return [parts[0], sep] + parts[1:]


def field(seg: bytes, n: int) -> bytes:
    f = header_fields(seg)
    return f[n] if n < len(f) else b""


def is_batch(data: bytes) -> bool:
    d = strip_bom(data).lstrip(b"\r\n")
    return d.startswith(b"FHS") or d.startswith(b"BHS")


def segments(data: bytes):
    return [s for s in re.split(rb"\r\n|\r|\n", strip_bom(data)) if s]


def expected_control_id(msg: bytes) -> bytes:
    """MSA-2 the daemon must echo: MSH-10 of a message; for a batch the
    BHS-11 of its (first) BHS, or FHS-11 when it has no BHS."""
    if is_batch(msg):
        segs = segments(msg)
        for s in segs:
            if s.startswith(b"BHS"):
                return field(s, 11)
        return field(segs[0], 11)
    return field(first_segment(msg), 10)


def split_messages(data: bytes):
    """Splits a file into the messages an MLLP sender would send, each as the
    exact bytes of the file: a batch is one message; otherwise a new message
    starts at every line that begins with MSH (a BOM stays with the first)."""
    if is_batch(data):
        return [data]
    body_start = 3 if data.startswith(BOM) else 0
    cuts = [m.start() + 1 for m in re.finditer(rb"[\r\n]MSH", data)]
    bounds = [0] + [c for c in cuts if c > body_start] + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if data[a:b].strip(b"\r\n")]


def make_message(control_id, send_app="TESTAPP", send_fac="TESTFAC", version="2.5",
                 msg_type="ADT^A01", accept_ack="", app_ack="", pad=0, extra_segments=()):
    """A small, valid ADT message (bytes, CR separated, no MLLP framing)."""
    msh = (f"MSH|^~\\&|{send_app}|{send_fac}|HL7BRIDGE|HL7BRIDGE|20260301120000||{msg_type}|"
           f"{control_id}|P|{version}|||{accept_ack}|{app_ack}")
    # EVN-5: the operator, resolved to a UPN by the users table of the
    # harness configuration (tests/fixtures/integration/users.csv)
    segs = [msh, "EVN|A01|20260301120000|||HB01^CLERK^CARL",
            "PID|1||MRN123^^^HOSP^MR||DOE^JANE||19800101|F|||1 MAIN ST^^SPRINGFIELD^IL^62701"]
    segs.extend(extra_segments)
    if pad:
        segs.append("NTE|1||" + ("X" * pad))
    return ("\r".join(segs) + "\r").encode("ascii")


# ---- ACKs ---------------------------------------------------------------------


class Ack:
    """One acknowledgement: raw bytes plus MSA-1, MSA-2, MSA-3 and the table
    0357 code of its ERR segment (None when there is none)."""

    def __init__(self, raw: bytes):
        self.raw = raw
        text = raw.decode("latin-1")
        self.message = None
        try:
            self.message = hl7.parse(text)
        except Exception:  # unusual delimiters: fall back to plain splitting
            self.message = None
        segs = segments(raw)
        if not segs or not segs[0].startswith(b"MSH"):
            raise AssertionError(f"ACK does not start with MSH: {raw!r}")
        self.msh = segs[0]
        fsep = self.msh[3:4]
        enc = header_fields(self.msh)[2] if len(header_fields(self.msh)) > 2 else b"^~\\&"
        self.comp_sep = enc[0:1] or b"^"
        self.sub_sep = enc[3:4] or b"&"
        self.segment_ids = [s[:3].decode("latin-1") for s in segs]
        msa = [s for s in segs if s.startswith(b"MSA")]
        if not msa:
            raise AssertionError(f"ACK has no MSA segment: {raw!r}")
        mf = msa[0].split(fsep)
        self.code = mf[1].decode("latin-1") if len(mf) > 1 else ""
        self.control_id = mf[2] if len(mf) > 2 else b""
        self.text = mf[3].decode("latin-1") if len(mf) > 3 else ""
        if self.message is not None:
            # Cross-check our splitting against python-hl7's parser.
            pm = self.message.segment("MSA")
            if str(pm[1]) != self.code:
                raise AssertionError(f"python-hl7 reads MSA-1 {str(pm[1])!r}, we read {self.code!r}")
        err = [s for s in segs if s.startswith(b"ERR")]
        self.err_segment = err[0] if err else None
        self.err_code = self._err_code(err[0].split(fsep)) if err else None
        self.msh9 = field(self.msh, 9).decode("latin-1")

    def _err_code(self, ef):
        # v2.5+: ERR-3 is a CWE code^text^HL70357.
        if len(ef) > 3 and ef[3]:
            return ef[3].split(self.comp_sep)[0].decode("latin-1")
        # before v2.5: ERR-1 is segment^sequence^field^code, the code a CE
        # whose parts are subcomponents: 101&Required field missing&HL70357.
        if len(ef) > 1 and ef[1]:
            comps = ef[1].split(self.comp_sep)
            if len(comps) >= 4 and comps[3]:
                return comps[3].split(self.sub_sep)[0].decode("latin-1")
        return ""

    @property
    def control_id_text(self):
        return self.control_id.decode("latin-1")

    def __repr__(self):
        return f"Ack({self.code} {self.control_id!r} {self.text!r} err={self.err_code})"


class MLLPConnection:
    """A small blocking MLLP client with its own receive buffer, so frames
    split over several reads or several ACKs in one read are both handled."""

    def __init__(self, port, host="127.0.0.1", timeout=IO_TIMEOUT_S):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def send(self, msg: bytes):
        self.sock.sendall(frame(msg))

    def recv_frame(self, timeout=None) -> bytes:
        """The next MLLP frame's content.  Raises socket.timeout, or
        ConnectionError when the server closed the connection first."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            start = self.buf.find(SB)
            if start >= 0:
                end = self.buf.find(EB + CR, start)
                if end >= 0:
                    content = self.buf[start + 1:end]
                    self.buf = self.buf[end + 2:]
                    return content
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out waiting for an MLLP frame")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buf += chunk

    def recv_ack(self, timeout=None) -> Ack:
        return Ack(self.recv_frame(timeout))

    def request(self, msg: bytes, timeout=None) -> Ack:
        self.send(msg)
        return self.recv_ack(timeout)

    def closed_by_peer(self, timeout) -> bool:
        """True when the server closes the connection within `timeout` s
        (EOF or reset); False when it is still open after that."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
            self.buf += chunk


# ---- the daemon -----------------------------------------------------------------


def _die_with_parent():
    """In the child before exec: SIGKILL it if the test runner dies, so no
    daemon outlives an interrupted run (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def _yaml_str(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Daemon:
    """One hl7bridge process with its own temporary directory and store.

    Daemon(testcase, **options).start() -> port; stop() sends SIGTERM and
    returns the exit status; kill() sends SIGKILL.  Cleanups registered on
    the test case kill the process (by its PID) and remove the directory even
    when the test fails."""

    def __init__(self, testcase, workdir=None, **opts):
        self.tc = testcase
        self.bin = require_binary(testcase)
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="hl7bridge-it-")
            testcase.addCleanup(shutil.rmtree, workdir, True)
        self.dir = Path(workdir)
        self.opts = dict(opts)
        self.proc = None
        self.port = None
        self.log_path = None
        self.db_path = self.dir / "store.db"
        self.config_path = self.dir / "hl7bridge.yaml"
        # The daemon's working directory (a test may run it from elsewhere).
        self.cwd = ROOT
        self._runs = 0
        self.env = None    # extra environment variables for the next start (None: inherited)
        # The store: SQLite in the work directory, or (a test case with
        # STORE_TYPE "postgresql", see OnPostgreSQL) a database of its own on
        # the process's throwaway PostgreSQL server.
        self.store_type = getattr(testcase, "STORE_TYPE", "sqlite")
        self.pg = self.pg_db = None
        if self.store_type == "postgresql":
            self.pg = pgserver.shared()
            _pg_seq[0] += 1
            self.pg_db = self.pg.create_db(f"it{os.getpid()}_{_pg_seq[0]}")
        testcase.addCleanup(self._cleanup)

    # configuration
    def config_text(self, port):
        o = self.opts
        lines = [
            "listen:",
            "  - name: it",
            f"    address: 127.0.0.1:{port}",
            f"    max_connections: {o.get('max_connections', 64)}",
            f"    max_message_bytes: {o.get('max_message_bytes', 16 * 1024 * 1024)}",
            f"    idle_timeout_s: {o.get('idle_timeout_s', 600)}",
            f"    frame_end: {o.get('frame_end', 'strict')}",
            "ack:",
            f"  mode: {o.get('ack_mode', 'original')}",
            "  application: HL7BRIDGE",
            "  facility: HL7BRIDGE",
            "store:",
        ] + ([
            "  type: postgresql",
            f"  url: {_yaml_str(self.pg.url(self.pg_db))}",
            f"  password: ${{{pgserver.PASSWORD_ENV}}}",
        ] if self.pg else []) + [
            f"  path: {_yaml_str(self.db_path)}",
            "  retention_days: 7",
            "  min_free_disk_mb: 0",
            "mapping:",
            "  lookups:",
            f"    users: {{file: {_yaml_str(o.get('users_csv', USERS_CSV))}, key_column: ehr_id, "
            "value_column: upn}",
            "log:",
            f"  level: {o.get('log_level', 'info')}",
            "  format: logfmt",
            "sinks:",
            "  audit:",
            "    type: file",
            f"    directory: {_yaml_str(self.dir / 'out')}",
            "  sms:",
            "    type: file",
            f"    path: {_yaml_str(self.dir / 'sms.jsonl')}",
        ] + [
            "metrics:",
            "  enabled: false",
        ]
        return "\n".join(lines) + "\n"

    def start(self, port=None):
        """Starts the daemon; returns its port.  Reuses the previous port
        (and store) on a restart unless told otherwise."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("daemon already running")
        attempts = 1 if (port or self.port) else 3
        last = ""
        for _ in range(attempts):
            p = port or self.port or free_port()
            self.config_path.write_text(self.config_text(p))
            self._runs += 1
            self.log_path = self.dir / f"daemon-{self._runs}.log"
            logf = open(self.log_path, "wb")
            try:
                self.proc = subprocess.Popen([str(self.bin), "run", "-c", str(self.config_path)],
                                             cwd=str(self.cwd),
                                             stdin=subprocess.DEVNULL,
                                             stdout=logf, stderr=logf,
                                             env=dict(os.environ, **self.env) if self.env else None,
                                             preexec_fn=_die_with_parent)
            finally:
                logf.close()
            ok, last = self._wait_started(p)
            if ok:
                self.port = p
                return p
            self._reap()
        self.tc.fail(f"hl7bridge did not start: {last}\n--- log ---\n{self.log()}")

    def _wait_started(self, port):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            log = self.log()
            if self.proc.poll() is not None:
                return False, f"exited with status {self.proc.returncode}"
            m = re.search(r"event=listening\b.*\bport=(\d+)", log)
            if m and "event=started" in log:
                if int(m.group(1)) != port:
                    return False, f"listening on port {m.group(1)}, configured {port}"
                return True, ""
            time.sleep(0.02)
        return False, f"no event=listening/event=started within {START_TIMEOUT_S} s"

    def log(self):
        try:
            return self.log_path.read_text(errors="replace") if self.log_path else ""
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM, wait; returns the exit status (kills it on timeout)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._reap()
            self.tc.fail(f"hl7bridge did not exit within {timeout} s of SIGTERM\n{self.log()}")

    def kill(self):
        """SIGKILL (kill -9); returns the exit status (-9)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=STOP_TIMEOUT_S)

    def _reap(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass

    def _cleanup(self):
        self._reap()

    def assert_stops_cleanly(self):
        rc = self.stop()
        self.tc.assertEqual(rc, 0, f"hl7bridge exit status after SIGTERM\n--- log ---\n{self.log()}")

    # clients
    def connect(self, timeout=IO_TIMEOUT_S) -> MLLPConnection:
        c = MLLPConnection(self.port, timeout=timeout)
        self.tc.addCleanup(c.close)
        return c

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    # store
    def db(self) -> sqlite3.Connection:
        """A connection to the SQLite store (text columns as bytes)."""
        con = sqlite3.connect(str(self.db_path), timeout=10)
        con.text_factory = bytes
        self.tc.addCleanup(con.close)
        return con

    def query(self, sql, params=()):
        """Rows of a query on the store.  On PostgreSQL each `?` takes one
        of params as a literal and every value comes back as text (None for
        NULL)."""
        if self.pg:
            parts = sql.split("?")
            if len(parts) != len(params) + 1:
                raise ValueError("one ? per parameter")
            text = parts[0] + "".join(_pg_literal(v) + rest for v, rest in zip(params, parts[1:]))
            return [tuple(r) for r in self.pg.psql(text, self.pg_db)]
        con = sqlite3.connect(str(self.db_path), timeout=10)
        con.text_factory = bytes
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def count_control_id(self, control_id, send_app=None, send_fac=None):
        """Rows of `messages` with this control id (and sending app/facility
        when given).  Values are compared as bytes, whatever the column's
        storage class."""
        def b(v):
            return v.encode() if isinstance(v, str) else v
        col = "{}" if self.pg else "CAST({} AS BLOB)"   # PostgreSQL: text columns
        sql = f"SELECT COUNT(*) FROM messages WHERE {col.format('control_id')} = ?"
        params = [b(control_id)]
        if send_app is not None:
            sql += f" AND {col.format('send_app')} = ?"
            params.append(b(send_app))
        if send_fac is not None:
            sql += f" AND {col.format('send_fac')} = ?"
            params.append(b(send_fac))
        return int(self.query(sql, params)[0][0])

    def control_id_counts(self):
        """{control id (bytes): number of rows} over the whole store."""
        if self.pg:
            rows = self.query("SELECT control_id, COUNT(*) FROM messages GROUP BY 1")
            return {(r[0] or "").encode(): int(r[1]) for r in rows}
        rows = self.query("SELECT CAST(control_id AS BLOB), COUNT(*) FROM messages GROUP BY 1")
        return {r[0]: r[1] for r in rows}

    def key_counts(self):
        """{(sending application, facility, control id) as header_text(): rows}
        over the whole store, in one query."""
        if self.pg:
            rows = self.query("SELECT send_app, send_fac, control_id, COUNT(*) FROM messages"
                              " GROUP BY 1, 2, 3")
            return {tuple(v or "" for v in r[:3]): int(r[3]) for r in rows}
        rows = self.query("SELECT CAST(send_app AS BLOB), CAST(send_fac AS BLOB),"
                          " CAST(control_id AS BLOB), COUNT(*) FROM messages GROUP BY 1, 2, 3")
        return {tuple(header_text(v or b"") for v in r[:3]): r[3] for r in rows}

    def raw_messages(self, control_id, send_app=None):
        """The stored bytes of every message with this control id (and
        sending application when given), in storage order."""
        col = "{}" if self.pg else "CAST({} AS BLOB)"
        sql = f"SELECT %s FROM messages WHERE {col.format('control_id')} = ?"
        params = [control_id]
        if send_app is not None:
            sql += f" AND {col.format('send_app')} = ?"
            params.append(send_app)
        sql += " ORDER BY id"
        if self.pg:
            return [bytes.fromhex(r[0]) for r in self.query(sql % "encode(raw, 'hex')", params)]
        return [bytes(r[0]) for r in
                self.query(sql % "raw", [v.encode() if isinstance(v, str) else v
                                         for v in params])]

    def row_data(self):
        """The data of every stored connector row (bytes), in id order."""
        if self.pg:
            return [bytes.fromhex(r[0]) for r in
                    self.query("SELECT encode(data, 'hex') FROM rows ORDER BY id")]
        return [bytes(r[0]) for r in self.query("SELECT data FROM rows ORDER BY id")]

    def store_intact(self):
        """SQLite's integrity check says ok; PostgreSQL's own crash recovery
        is the server's business (True)."""
        return self.pg is not None or self.query("PRAGMA integrity_check")[0][0] == b"ok"


_pg_seq = [0]


def header_text(b: bytes) -> str:
    """A header field as the PostgreSQL store keeps it: UTF-8, else read as
    ISO 8859-1."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def _pg_literal(v):
    """A PostgreSQL literal of a test value (text, number, or bytes as
    header_text())."""
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, bytes):
        v = header_text(v)
    return "E'" + str(v).replace("\\", "\\\\").replace("'", "''") + "'"


class OnPostgreSQL:
    """Mixin for a test case written for SQLite: put it first,
    `class XOnPostgreSQL(OnPostgreSQL, X)`, and every Daemon the tests start
    stores in PostgreSQL (a database of its own on the process's throwaway
    server, pgserver.shared()).  SQLITE_ONLY names the tests that stay on
    SQLite and says why; they are skipped here with that reason.  Skipped
    with what to install when the server binaries are absent."""

    STORE_TYPE = "postgresql"
    SQLITE_ONLY = {}

    def setUp(self):
        why = self.SQLITE_ONLY.get(self._testMethodName)
        if why:
            self.skipTest(f"SQLite only: {why}")
        pgserver.shared()
        super().setUp()


class DaemonTestCase(unittest.TestCase):
    """Base class: self.daemon is started before each test with the options
    of DAEMON_OPTS."""

    DAEMON_OPTS = {}

    def setUp(self):
        self.daemon = Daemon(self, **self.DAEMON_OPTS)
        self.daemon.start()

    def run_cmd(self, argv, timeout=60, **kw):
        """Runs a command; returns CompletedProcess (stdout/stderr bytes)."""
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=timeout, **kw)
        except subprocess.TimeoutExpired as e:
            self.fail(f"{argv[0]} did not finish within {timeout} s: {e}")

    def assertAlive(self):
        self.assertTrue(self.daemon.alive(), f"hl7bridge died\n--- log ---\n{self.daemon.log()}")
        with self.daemon.connect() as c:
            cid = f"ALIVE{time.monotonic_ns()}"
            ack = c.request(make_message(cid))
            self.assertEqual((ack.code, ack.control_id_text), ("AA", cid))


def corpus_files(malformed):
    root = corpus_dir()
    if root is None:
        return None, []
    files = sorted(p for p in root.rglob("*.hl7") if ("malformed" in p.relative_to(root).parts) == malformed)
    return root, files
