"""A strict Azure Communication Services SMS emulator for hl7bridge's tests.

HTTPS on loopback (certificate made by the test with the openssl command).
For every POST /sms?api-version=2021-03-07 it

  * recomputes the HMAC-SHA256 signature over
    "POST\\n<path and query>\\n<x-ms-date>;<Host>;<x-ms-content-sha256>" with
    the base64-decoded access key, checks the content hash against the body
    and the date against the clock (at most MAX_SKEW_S apart) — any mismatch
    is answered 401 like the service, and recorded in `errors`;
  * checks the body schema (from / to in E.164, 1–100 recipients, a 36
    character UUID repeatabilityRequestId, an RFC 1123 repeatabilityFirstSent,
    message of at most 2,048 characters, smsSendOptions with
    enableDeliveryReport) — 400 and recorded otherwise;
  * honours repeatability as the service does (OASIS Repeatable Requests,
    which ACS follows): a request id already delivered is answered 202
    again ("accepted", the same messageId) without a second delivery; the
    same id with another first-sent date does not match the first request
    and is rejected (recipient status 400, repeatabilityResult "rejected",
    nothing delivered) and recorded in `errors`;
  * injects faults queued with `fail_next()`: a whole-request status (429 with
    Retry-After, 500, 401 …), a 202 whose recipient failed (400 / 503), or
    "hold": the text is delivered but the answer waits until `release` is
    set (a sender that dies meanwhile never learns it went out).

Usable in-process (AcsEmulator(...).start()) or standalone:
    python3 acs_emulator.py --port 8443 --cert server.pem --key server.key --access-key BASE64
"""

import base64
import email.utils
import hashlib
import hmac
import json
import re
import ssl
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = "/sms?api-version=2021-03-07"
MAX_SKEW_S = 300
E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def sign(key: bytes, path: str, date: str, host: str, content_hash: str) -> str:
    sts = f"POST\n{path}\n{date};{host};{content_hash}".encode()
    return base64.b64encode(hmac.new(key, sts, hashlib.sha256).digest()).decode()


class AcsEmulator:
    def __init__(self, access_key_b64, certfile, keyfile, port=0, host="127.0.0.1"):
        self.key = base64.b64decode(access_key_b64)
        self.certfile, self.keyfile = certfile, keyfile
        self.host, self.port = host, port
        self.lock = threading.Lock()
        self.deliveries = []      # dicts: to, message, request_id, first_sent, time
        self.requests = []        # every request: (status answered, request id or None)
        self.request_times = []   # every well-formed request: (time.time() on arrival, id)
        self.errors = []          # protocol violations seen
        self.faults = deque()
        self.first_sent = {}      # request id -> first-sent date of its first attempt
        self.delivered_ids = {}   # request id -> messageId
        self.holding = threading.Event()   # a "hold" request has arrived
        self.held = []                     # request ids of held requests
        self.release = threading.Event()   # lets held answers go
        self.server = None
        self.thread = None

    # ---- control ----
    def fail_next(self, kind, status, headers=None, message=None):
        """kind 'http': answer the next request with `status` (and headers);
        kind 'recipient': 202 with the recipient failed with `status`;
        kind 'hold': delivered, answered only once `release` is set."""
        with self.lock:
            self.faults.append((kind, status, headers or {}, message))

    def start(self):
        emu = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                emu._handle(self)

        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.certfile, self.keyfile)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self.port

    def stop(self):
        self.release.set()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def delivered(self):
        with self.lock:
            return list(self.deliveries)

    # ---- one request ----
    def _answer(self, h, status, obj=None, headers=None):
        body = json.dumps(obj).encode() if obj is not None else b""
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _violation(self, h, status, code, msg, rid=None):
        with self.lock:
            self.errors.append(f"{status} {code}: {msg}")
            self.requests.append((status, rid))
        self._answer(h, status, {"error": {"code": code, "message": msg}})

    def _handle(self, h):
        n = int(h.headers.get("Content-Length", "0"))
        body = h.rfile.read(n)
        if h.path != PATH:
            return self._violation(h, 404, "NotFound", f"path {h.path}")
        if h.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return self._violation(h, 415, "UnsupportedMediaType", "content type")
        date = h.headers.get("x-ms-date", "")
        chash = h.headers.get("x-ms-content-sha256", "")
        auth = h.headers.get("Authorization", "")
        host = h.headers.get("Host", "")
        try:
            when = email.utils.parsedate_to_datetime(date).timestamp()
        except Exception:
            return self._violation(h, 401, "Denied", "x-ms-date is not an RFC 1123 date")
        if abs(when - time.time()) > MAX_SKEW_S:
            return self._violation(h, 401, "Denied", "x-ms-date too far from now")
        want_hash = base64.b64encode(hashlib.sha256(body).digest()).decode()
        if chash != want_hash:
            return self._violation(h, 401, "Denied", "content hash does not match the body")
        want = ("HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature="
                + sign(self.key, h.path, date, host, chash))
        if not hmac.compare_digest(auth, want):
            return self._violation(h, 401, "Denied", "signature does not match")
        try:
            req = json.loads(body)
            problem = self._schema(req)
        except ValueError as e:
            problem = f"body is not JSON: {e}"
        if problem:
            return self._violation(h, 400, "BadRequest", problem)
        rec = req["smsRecipients"][0]
        rid = rec["repeatabilityRequestId"]
        with self.lock:
            self.request_times.append((time.time(), rid))
            prev = self.first_sent.get(rid)
            mismatch = prev is not None and prev != rec["repeatabilityFirstSent"]
            if prev is None:
                self.first_sent[rid] = rec["repeatabilityFirstSent"]
            elif mismatch:
                self.errors.append(f"repeatabilityFirstSent changed for {rid}")
            fault = self.faults.popleft() if self.faults and not mismatch else None
        if mismatch:
            # A repeat that does not match the first request: refused, and
            # nothing is delivered.
            with self.lock:
                self.requests.append((202, rid))
            return self._answer(h, 202, {"value": [{
                "to": rec["to"], "messageId": None, "httpStatusCode": 400,
                "repeatabilityResult": "rejected", "successful": False,
                "errorMessage": "repeatabilityFirstSent does not match the first request"}]})
        if fault and fault[0] == "http":
            with self.lock:
                self.requests.append((fault[1], rid))
            return self._answer(h, fault[1], {"error": {"code": "Injected", "message": "fault"}},
                                fault[2])
        results = []
        for r in req["smsRecipients"]:
            rid = r["repeatabilityRequestId"]
            if fault and fault[0] == "recipient":
                results.append({"to": r["to"], "messageId": None, "httpStatusCode": fault[1],
                                "repeatabilityResult": "rejected", "successful": False,
                                "errorMessage": fault[3] or "injected recipient failure"})
                continue
            with self.lock:
                mid = self.delivered_ids.get(rid)
                if mid is None:
                    mid = f"Outgoing_{uuid.uuid4()}_noam"
                    self.delivered_ids[rid] = mid
                    self.deliveries.append({"to": r["to"], "from": req["from"],
                                            "message": req["message"],
                                            "request_id": rid, "time": time.time(),
                                            "first_sent": r["repeatabilityFirstSent"]})
            results.append({"to": r["to"], "messageId": mid, "httpStatusCode": 202,
                            "repeatabilityResult": "accepted", "successful": True,
                            "errorMessage": None})
        with self.lock:
            self.requests.append((202, rid))
        if fault and fault[0] == "hold":
            with self.lock:
                self.held.append(rid)
            self.holding.set()
            self.release.wait(300)
            try:
                self._answer(h, 202, {"value": results})
            except OSError:
                pass  # the sender is gone
            return
        self._answer(h, 202, {"value": results})

    @staticmethod
    def _schema(req):
        if not isinstance(req, dict):
            return "body is not an object"
        allowed = {"from", "smsRecipients", "message", "smsSendOptions"}
        if set(req) - allowed:
            return f"unknown keys {sorted(set(req) - allowed)}"
        if not isinstance(req.get("from"), str) or not E164.match(req["from"]):
            return "from is not E.164"
        rs = req.get("smsRecipients")
        if not isinstance(rs, list) or not 1 <= len(rs) <= 100:
            return "smsRecipients must hold 1..100 entries"
        for r in rs:
            if not isinstance(r, dict) or set(r) - {"to", "repeatabilityRequestId",
                                                    "repeatabilityFirstSent"}:
                return "bad recipient object"
            if not isinstance(r.get("to"), str) or not E164.match(r["to"]):
                return "to is not E.164"
            rid = r.get("repeatabilityRequestId")
            if not isinstance(rid, str) or len(rid) != 36 or not UUID_RE.match(rid):
                return "repeatabilityRequestId is not a UUID"
            fs = r.get("repeatabilityFirstSent")
            try:
                email.utils.parsedate_to_datetime(fs)
            except Exception:
                return "repeatabilityFirstSent is not an RFC 1123 date"
            if not re.match(r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$", fs):
                return "repeatabilityFirstSent is not in RFC 1123 form"
        m = req.get("message")
        if not isinstance(m, str) or not m or len(m) > 2048:
            return "message missing or longer than 2048 characters"
        opts = req.get("smsSendOptions")
        if opts is not None:
            if not isinstance(opts, dict) or not isinstance(opts.get("enableDeliveryReport"), bool):
                return "smsSendOptions.enableDeliveryReport is required"
            if "tag" in opts and not isinstance(opts["tag"], str):
                return "smsSendOptions.tag must be a string"
        return None


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8443)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--access-key", required=True)
    a = ap.parse_args()
    e = AcsEmulator(a.access_key, a.cert, a.key, a.port)
    print(f"ACS emulator on https://127.0.0.1:{e.start()}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        e.stop()
