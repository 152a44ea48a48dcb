"""HTTPS emulator of the two endpoints the audit sink talks to: the Microsoft
identity platform's v1 token endpoint and the Purview connector's ingestion
endpoint.  It checks the protocol strictly and records every row it
accepts, so tests can compare row sets; faults can be injected per request.

Used in-process by the integration tests (Emulator(...).start()), or alone:

    /usr/bin/python3 tests/integration/emulator.py --port 8443 --dir /tmp/emu \
        --header-file header.txt [--format tsv] [--eol crlf]

Certificates: make_pki(dir) creates a test CA and a server certificate for
127.0.0.1 and localhost with the `openssl` command.

Protocol checked
  token  POST /<tenant>/oauth2/token?api-version=1.0, form-urlencoded with
         exactly client_id, client_secret, grant_type=client_credentials,
         resource (the configured value) and tenant_id (= the path's tenant).
         A wrong secret gets 401 {"error":"invalid_client",
         "error_description":"AADSTS7000215: ..."}.
  upload POST /api/signals?jobid=<job>, Authorization: Bearer <issued,
         unexpired token>, multipart/form-data with exactly one part named
         "file" with a filename; its text is the header line (equal to the
         configured one) and 1..100000 rows, each with as many fields as the
         header, lines ending as configured, UTF-8 without BOM.
Anything else is answered 400 (and counted in .violations) — the test then
fails on it.
"""

import csv
import io
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEFAULT_RESOURCE = "https://microsoft.onmicrosoft.com/86dfdabb-5089-4a0c-880a-cfa5a790c5b1"
MAX_BLOCK_ROWS = 100000


def make_pki(directory):
    """Creates ca.pem, server.pem, server.key in `directory` (openssl CLI).
    Returns (ca_file, cert_file, key_file)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = d / "ca.key", d / "ca.pem"
    key, csr, pem, ext = d / "server.key", d / "server.csr", d / "server.pem", d / "ext.cnf"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(ca_key), "-out", str(ca_pem), "-days", "2",
        "-subj", "/CN=hl7bridge test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(pem), "-days", "2", "-extfile", str(ext))
    return str(ca_pem), str(pem), str(key)


class Emulator:
    """Both endpoints on one HTTPS port.  Attributes tests look at:
    rows (list of row strings, in arrival order), uploads (list of dicts),
    tokens_issued, token_requests, violations (protocol errors seen)."""

    def __init__(self, cert, key, header, tenant="tenant-1", client_id="app-1",
                 secret="s3cret-value", job_id="job-1", resource=DEFAULT_RESOURCE,
                 fmt="tsv", eol="\r\n", token_lifetime_s=3600, expires_as_string=True,
                 port=0, keep_rows=True):
        self.cert, self.key = cert, key
        self.header = header            # without line ending
        self.tenant, self.client_id, self.secret = tenant, client_id, secret
        self.job_id, self.resource = job_id, resource
        self.fmt, self.eol = fmt, eol
        self.token_lifetime_s = token_lifetime_s
        self.expires_as_string = expires_as_string
        self.keep_rows = keep_rows
        self.port = port
        self.lock = threading.Lock()
        self.rows = []
        self.row_count = 0
        self.uploads = []
        self.tokens = {}                # token -> expiry (monotonic)
        self.tokens_issued = 0
        self.token_requests = 0
        self.violations = []
        self.upload_faults = []         # consumed one per upload request
        self.token_faults = []          # consumed one per token request
        self.sticky_fault = None        # applied to every upload while set
        self.slow_s = 0.0               # delay before answering every upload
        self.hanging = threading.Event()  # set while an upload is held ("hang", "accept-hang")
        self.release = threading.Event()  # lets the held upload go (closed, never accepted)
        self.held_rows = None           # rows of an "accept-hang" upload (accepted, unanswered)
        self.server = None
        self.thread = None
        self.first_accept = None
        self.last_accept = None
        self.conns = set()              # open client connections, closed by stop()

    # ---- control ----------------------------------------------------------
    def start(self):
        handler = _make_handler(self)
        srv = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        srv.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        self.port = srv.server_address[1]
        self.server = srv
        self.thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self.port

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
            self.thread.join(5)
        # Keep-alive connections outlive the listener: cut them too, so
        # "down" really means down.
        with self.lock:
            conns, self.conns = list(self.conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def expire_tokens(self):
        with self.lock:
            for t in self.tokens:
                self.tokens[t] = 0.0

    @property
    def token_url(self):
        return f"https://127.0.0.1:{self.port}/{self.tenant}/oauth2/token?api-version=1.0"

    @property
    def upload_url(self):
        return f"https://127.0.0.1:{self.port}/api/signals"

    def accepted_rows(self):
        with self.lock:
            return list(self.rows)

    def accepted_count(self):
        with self.lock:
            return self.row_count

    def violation(self, text):
        with self.lock:
            self.violations.append(text)

    # ---- checks -------------------------------------------------------------
    def check_token_form(self, path, ctype, body):
        """Returns (status, json) for a token request."""
        tenant_in_path = path.split("?")[0].strip("/").split("/")[0]
        q = urllib.parse.urlparse(path).query
        if urllib.parse.parse_qs(q).get("api-version") != ["1.0"]:
            return 400, _aad_error("invalid_request", "AADSTS900144: api-version 1.0 expected")
        if not ctype.startswith("application/x-www-form-urlencoded"):
            return 400, _aad_error("invalid_request", f"AADSTS900144: bad content type {ctype}")
        try:
            fields = urllib.parse.parse_qs(body.decode("ascii"), keep_blank_values=True,
                                           strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return 400, _aad_error("invalid_request", "AADSTS900144: body is not a form")
        want = {"client_id", "client_secret", "grant_type", "resource", "tenant_id"}
        if set(fields) != want or any(len(v) != 1 for v in fields.values()):
            return 400, _aad_error("invalid_request",
                                   f"AADSTS900144: fields {sorted(fields)} != {sorted(want)}")
        f = {k: v[0] for k, v in fields.items()}
        if f["grant_type"] != "client_credentials":
            return 400, _aad_error("unsupported_grant_type", "AADSTS70003: grant type")
        if tenant_in_path != self.tenant or f["tenant_id"] != self.tenant:
            return 400, _aad_error("invalid_request",
                                   "AADSTS90002: Tenant '%s' not found." % f["tenant_id"])
        if f["resource"] != self.resource:
            return 400, _aad_error("invalid_resource",
                                   "AADSTS500011: The resource principal named %s was not found"
                                   % f["resource"])
        if f["client_id"] != self.client_id:
            return 400, _aad_error("unauthorized_client",
                                   "AADSTS700016: Application with identifier '%s' was not found"
                                   % f["client_id"])
        if f["client_secret"] != self.secret:
            return 401, _aad_error("invalid_client",
                                   "AADSTS7000215: Invalid client secret provided.")
        tok = secrets.token_urlsafe(32)
        life = self.token_lifetime_s
        with self.lock:
            self.tokens[tok] = time.monotonic() + life
            self.tokens_issued += 1
        exp = str(life) if self.expires_as_string else life
        return 200, {"token_type": "Bearer", "expires_in": exp, "ext_expires_in": exp,
                     "expires_on": str(int(time.time()) + life), "not_before": str(int(time.time())),
                     "resource": self.resource, "access_token": tok}

    def check_upload(self, path, headers, body):
        """Returns (status, json, rows) for an upload request; rows is None
        when refused."""
        u = urllib.parse.urlparse(path)
        if u.path != "/api/signals":
            return 404, {"error": "not found"}, None
        q = urllib.parse.parse_qs(u.query)
        if q.get("jobid") != [self.job_id]:
            return 400, {"error": "InvalidJobId", "message": "unknown job id"}, None
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            self.violation("upload without bearer token")
            return 401, {"error": "Unauthorized"}, None
        tok = auth[7:]
        with self.lock:
            exp = self.tokens.get(tok)
        if exp is None:
            self.violation("upload with a token never issued")
            return 401, {"error": "Unauthorized"}, None
        if time.monotonic() >= exp:
            return 401, {"error": "Unauthorized", "message": "token expired"}, None
        ctype = headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data; boundary="):
            return self._bad(f"content type {ctype!r}")
        boundary = ctype.split("boundary=", 1)[1].strip('"').encode("ascii")
        opening = b"--" + boundary + b"\r\n"
        closing = b"\r\n--" + boundary + b"--\r\n"
        if not body.startswith(opening) or not body.endswith(closing):
            return self._bad("multipart opening/closing delimiter")
        inner = body[len(opening):-len(closing)]
        if (b"--" + boundary) in inner:
            return self._bad("more than one part")
        head, sep, content = inner.partition(b"\r\n\r\n")
        if not sep:
            return self._bad("part headers not terminated")
        disp = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-disposition:")]
        if len(disp) != 1:
            return self._bad("no Content-Disposition")
        d = disp[0].decode("ascii", "replace")
        if 'form-data' not in d or 'name="file"' not in d or 'filename="' not in d:
            return self._bad(f"disposition {d!r}")
        fname = d.split('filename="', 1)[1].split('"', 1)[0]
        if not fname:
            return self._bad("empty file name")
        rows, err = self.check_text(content)
        if err:
            return self._bad(err)
        return 200, {"status": "Accepted", "rows": len(rows), "file": fname}, rows

    def _bad(self, why):
        self.violation(why)
        return 400, {"error": "BadRequest", "message": why}, None

    def check_text(self, content):
        """(rows, None) or (None, reason)."""
        if content.startswith(b"\xef\xbb\xbf"):
            return None, "BOM"
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            return None, "not UTF-8"
        eol = self.eol
        if not text.endswith(eol):
            return None, "last line does not end with the line ending"
        if eol == "\n" and "\r" in text and self.fmt != "csv":
            return None, "CR in an LF file"
        if self.fmt == "csv":
            recs = list(csv.reader(io.StringIO(text, newline=""), strict=True))
            lines = recs
            first = text.split(eol, 1)[0]
            if first != self.header:
                return None, "header line differs from the configured columns"
            width = len(recs[0])
            bad = [i for i, r in enumerate(recs) if len(r) != width]
            if bad:
                return None, f"row {bad[0]} has {len(recs[bad[0]])} fields, header {width}"
            rows = [text_line for text_line in _csv_lines(text, eol)][1:]
        else:
            lines = text[: -len(eol)].split(eol)
            if lines[0] != self.header:
                return None, "header line differs from the configured columns"
            delim = "\t" if self.fmt == "tsv" else "|"
            width = lines[0].count(delim)
            for i, ln in enumerate(lines):
                if "\r" in ln or "\n" in ln:
                    return None, f"stray line break in line {i}"
                if ln.count(delim) != width:
                    return None, f"line {i} has {ln.count(delim) + 1} fields, header {width + 1}"
            rows = lines[1:]
        if not rows:
            return None, "no rows"
        if len(rows) > MAX_BLOCK_ROWS:
            return None, f"{len(rows)} rows in one block"
        return rows, None

    # ---- request handling ---------------------------------------------------
    def next_fault(self, kind):
        with self.lock:
            q = self.upload_faults if kind == "upload" else self.token_faults
            if q:
                return q.pop(0)
            return self.sticky_fault if kind == "upload" else None


def _csv_lines(text, eol):
    """Splits csv text into records as text (quoted line breaks kept)."""
    out, cur, quoted = [], [], False
    i = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            quoted = not quoted
        if not quoted and text.startswith(eol, i):
            out.append("".join(cur))
            cur = []
            i += len(eol)
            continue
        cur.append(c)
        i += 1
    if cur:
        out.append("".join(cur))
    return out


def _aad_error(code, desc):
    return {"error": code, "error_description": desc + " Trace ID: 0000 Timestamp: now",
            "error_codes": [int(desc[6:].split(":")[0])] if desc.startswith("AADSTS") else [],
            "timestamp": "now", "trace_id": "0000"}


def _make_handler(emu):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # keep test output quiet
            pass

        def setup(self):
            super().setup()
            with emu.lock:
                emu.conns.add(self.connection)

        def finish(self):
            with emu.lock:
                emu.conns.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def _send(self, status, obj, extra=()):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _reset(self):
            # An abrupt close (RST) in the middle of the exchange.
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            self.close_connection = True
            try:
                self.connection.close()
            except OSError:
                pass

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(n) if n else b""
            is_token = "/oauth2/token" in self.path
            fault = emu.next_fault("token" if is_token else "upload")
            if fault:
                if fault == "reset":
                    return self._reset()
                if fault == "hang":
                    # Read, never accepted: held until released (the
                    # client is killed meanwhile), then cut.
                    emu.hanging.set()
                    emu.release.wait(60)
                    return self._reset()
                if fault.startswith("slow:"):
                    time.sleep(float(fault[5:]))
                elif fault.startswith("429"):
                    ra = fault.split(":", 1)[1] if ":" in fault else "1"
                    return self._send(429, {"error": "TooManyRequests"}, [("Retry-After", ra)])
                elif fault.startswith("503"):
                    extra = [("Retry-After", fault.split(":", 1)[1])] if ":" in fault else []
                    return self._send(503, {"error": "ServiceUnavailable"}, extra)
                elif fault == "400:echo":
                    # A connector that quotes the offending data back (rows
                    # hold patient names): the client must not log it.
                    text = body.decode("latin-1")
                    after = text[text.find(emu.header) + len(emu.header):].lstrip("\r\n")
                    row = after.splitlines()[0] if after else ""
                    return self._send(400, {"error": "BadRequest", "message": "invalid row: " + row})
                elif fault in ("400", "401", "403", "500"):
                    return self._send(int(fault), {"error": "Injected", "message": "fault " + fault})
            if is_token:
                with emu.lock:
                    emu.token_requests += 1
                st, obj = emu.check_token_form(self.path, self.headers.get("Content-Type", ""), body)
                return self._send(st, obj)
            if emu.slow_s:
                time.sleep(emu.slow_s)
            st, obj, rows = emu.check_upload(self.path, self.headers, body)
            if rows is not None:
                now = time.monotonic()
                with emu.lock:
                    if emu.keep_rows:
                        emu.rows.extend(rows)
                    emu.row_count += len(rows)
                    emu.uploads.append({"rows": len(rows), "file": obj["file"], "t": now})
                    emu.first_accept = emu.first_accept or now
                    emu.last_accept = now
            if fault == "accept-hang" and rows is not None:
                # Received and kept, but the answer never comes: the
                # client cannot know (it is killed meanwhile), then cut.
                emu.held_rows = rows
                emu.hanging.set()
                emu.release.wait(60)
                return self._reset()
            self._send(st, obj)

        def do_GET(self):
            self._send(405, {"error": "MethodNotAllowed"})

    return Handler


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8443)
    ap.add_argument("--dir", required=True, help="where the test CA and certificate go")
    ap.add_argument("--header-file", required=True)
    ap.add_argument("--format", default="tsv", choices=["tsv", "csv", "psv"])
    ap.add_argument("--eol", default="crlf", choices=["crlf", "lf"])
    ap.add_argument("--secret", default=os.environ.get("EMU_SECRET", "s3cret-value"))
    a = ap.parse_args()
    ca, cert, key = make_pki(a.dir)
    header = Path(a.header_file).read_text().rstrip("\r\n")
    emu = Emulator(cert, key, header, fmt=a.format, eol="\r\n" if a.eol == "crlf" else "\n",
                   secret=a.secret, port=a.port, keep_rows=False)
    emu.start()
    print(f"emulator on {emu.port}; CA {ca}; token {emu.token_url}; upload {emu.upload_url}",
          flush=True)
    try:
        while True:
            time.sleep(5)
            print(f"rows={emu.accepted_count()} uploads={len(emu.uploads)} "
                  f"violations={len(emu.violations)}", flush=True)
    except KeyboardInterrupt:
        emu.stop()


if __name__ == "__main__":
    sys.exit(main())
