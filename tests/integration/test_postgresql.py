"""store.type postgresql: several nodes on one PostgreSQL store.

One throwaway server (pgserver.py: initdb as an unprivileged user, a free
127.0.0.1 port, password authentication), shared by every module of the
test process (pgserver.shared()); each test gets its own database.

- two nodes on one database under load through both, every 10th message
  re-sent to the other node: answered AA and stored once; the same message
  sent to both nodes at the same moment: stored once, both AA;
- the server stopped under load: AE "Cannot store message" (never AA) and
  /readyz 503 while it is down, no connection dropped, every AA'd message
  stored once, accepting again (and /readyz 200) by itself once it is back;
  the AE'd messages re-sent: every message sent stored exactly once;
- fail-over to a standby: a primary of its own with a synchronous streaming
  standby, store.url naming both hosts with target_session_attrs=read-write;
  the primary stopped (immediate) under load, AE until the standby is
  promoted, then AA on it by itself, every AA'd message on the new primary;
- every node's heartbeat (table nodes, node.heartbeat_s 1 here): `stats
  --cluster` and /status "cluster" show both nodes up with their ACK counts
  and the totals; a node killed with SIGKILL shown as down after three
  missed heartbeats; on SQLite `stats --cluster` says it needs PostgreSQL;
- retention with two nodes and a test clock (libfaketime, as in
  test_retention.py): raw bodies, delivered messages (those without rows
  too) and their rows purged once for the cluster, nothing while the
  housekeeping lock is held elsewhere; `stats --daily` counting each
  message once for the two nodes;
- a COMMIT the server refuses (a deferred constraint) answered AE, also
  inside a large group from several connections: what shared its
  transaction AE and not stored, every AA'd message stored, each
  connection's ACKs in its order;
- a schema newer than the build refused by `check` and `run`;
- `check`: what is wrong (password, unreachable server), the password never
  printed or logged; a password file others may read, a password in
  store.url, and the SMS sink (not on PostgreSQL yet) refused.
"""

import json
import os
import subprocess
import threading
import time
import unittest
import urllib.error
import urllib.request

from harness import (Daemon, USERS_CSV, _yaml_str, frame, free_port, make_message,
                     require_binary)
import pgserver
from test_retention import RetentionDaemon, faketime_lib

SERVER = None
PW_ENV = pgserver.PASSWORD_ENV


def setUpModule():
    global SERVER
    SERVER = pgserver.shared()


_db_seq = [0]


def new_db():
    _db_seq[0] += 1
    return SERVER.create_db(f"hb{os.getpid()}_{_db_seq[0]}")


class PgDaemon(Daemon):
    """A node on the module's server: store.type postgresql, password from
    the environment, metrics on (for /readyz), no sinks."""

    def __init__(self, testcase, db, node, heartbeat_s=None, **opts):
        super().__init__(testcase, **opts)
        self.pg_db = db
        self.node = node
        self.heartbeat_s = heartbeat_s
        self.url = None         # store.url (default: the module's server, database db)
        self.metrics_port = free_port()
        self.env = {PW_ENV: pgserver.PASSWORD}

    def config_text(self, port):
        lines = [
            "node:",
            f"  name: {self.node}",
        ] + ([f"  heartbeat_s: {self.heartbeat_s}"] if self.heartbeat_s else []) + [
            "listen:",
            "  - name: it",
            f"    address: 127.0.0.1:{port}",
            "store:",
            "  type: postgresql",
            f"  url: {_yaml_str(self.url or SERVER.url(self.pg_db))}",
            f"  password: ${{{PW_ENV}}}",
            f"  path: {_yaml_str(self.db_path)}",
            "  retention: {rejected: 1m, quarantined: 1m}",
            "mapping:",
            "  lookups:",
            f"    users: {{file: {_yaml_str(USERS_CSV)}, key_column: ehr_id, value_column: upn}}",
            "log:",
            "  level: info",
            "sinks:",
            "  audit:",
            "    type: none",
            "  sms:",
            "    type: none",
            "metrics:",
            f"  address: 127.0.0.1:{self.metrics_port}",
        ]
        return "\n".join(lines) + "\n"

    def status(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/status",
                                    timeout=5) as r:
            return json.loads(r.read())

    def readyz(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz",
                                        timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code


def wait_for(pred, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stats_cluster(d):
    """`hl7bridge stats --cluster` with d's configuration: (exit status,
    {node: [state, version, pid, AA, AE, AR, stored]}, totals [AA, AE, AR,
    stored], output)."""
    env = dict(os.environ, **(d.env or {}))
    r = subprocess.run([str(d.bin), "stats", "--cluster", "-c", str(d.config_path)],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60, env=env)
    out = r.stdout.decode(errors="replace")
    nodes, total = {}, None
    for line in out.splitlines()[2:]:
        f = line.split()
        if f and f[0] == "total":
            total = [int(x) for x in f[1:5]]
        elif len(f) == 11:
            nodes[f[0]] = [f[1], f[5], int(f[6])] + [int(x) for x in f[7:11]]
    return r.returncode, nodes, total, out + r.stderr.decode(errors="replace")


class TwoNodes(unittest.TestCase):
    def setUp(self):
        self.db = new_db()
        self.a = PgDaemon(self, self.db, "node-a", heartbeat_s=1)
        self.b = PgDaemon(self, self.db, "node-b", heartbeat_s=1)
        self.a.start()
        self.b.start()

    def stored(self):
        """{control id: count} of the journal."""
        rows = SERVER.psql("SELECT control_id, COUNT(*) FROM messages GROUP BY 1", self.db)
        return {r[0]: int(r[1]) for r in rows}

    def test_load_through_both_resends_to_the_other_node(self):
        # Retention (1 minute for rejected and quarantined messages) runs
        # meanwhile on whichever node holds the housekeeping lock.
        now_ms = int(time.time() * 1000)
        SERVER.psql(
            "INSERT INTO rejected (node, received_ms, listener, peer, send_app, send_fac,"
            " control_id, msg_type, \"trigger\", version, ack_code, reason, err_code, err_where)"
            f" VALUES ('x', 1000, 'it', 'p', 'A', 'F', 'OLD-R', 'ADT', 'A01', '2.5', 'AR', 'r',"
            f" 203, 'MSH^1^12'), ('x', {now_ms}, 'it', 'p', 'A', 'F', 'NEW-R', 'ADT', 'A01', '2.5',"
            " 'AR', 'r', 203, 'MSH^1^12');"
            "INSERT INTO messages (node, received_ms, listener, peer, send_app, send_fac,"
            " control_id, msg_type, \"trigger\", version, ack_code, quarantined, digest)"
            " VALUES ('x', 1000, 'it', 'p', 'A', 'F', 'OLD-Q', 'ADT', 'A01', '2.5', 'AA', 1, 1);"
            "INSERT INTO rows (msg_id, seq, data) SELECT id, 0, 'x' FROM messages"
            " WHERE control_id = 'OLD-Q'", self.db)
        senders, per_sender = 4, 150
        errors, resent = [], []

        def sender(i):
            home, other = (self.a, self.b) if i % 2 == 0 else (self.b, self.a)
            try:
                with home.connect() as ch, other.connect() as co:
                    for k in range(per_sender):
                        cid = f"S{i}-{k}"
                        msg = make_message(cid, send_app=f"APP{i}")
                        ack = ch.request(msg)
                        if (ack.code, ack.control_id_text) != ("AA", cid):
                            errors.append(f"{cid}: {ack.code} from its node")
                        if k % 10 == 9:
                            # the engine saw no ACK and re-sends through the other node
                            again = co.request(msg)
                            resent.append(cid)
                            if (again.code, again.control_id_text) != ("AA", cid):
                                errors.append(f"{cid}: re-send answered {again.code}")
            except Exception as e:  # reported below with the others
                errors.append(f"sender {i}: {e!r}")

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        counts = {c: n for c, n in self.stored().items() if not c.startswith("OLD")}
        self.assertEqual(len(counts), senders * per_sender)
        self.assertEqual({c for c, n in counts.items() if n != 1}, set())
        dup = SERVER.psql("SELECT COALESCE(SUM(dup_count), 0) FROM messages", self.db)
        self.assertEqual(int(dup[0][0]), len(resent))
        nodes = SERVER.psql("SELECT node, COUNT(*) FROM messages WHERE node <> 'x'"
                            " GROUP BY 1 ORDER BY 1", self.db)
        self.assertEqual([r[0] for r in nodes], ["node-a", "node-b"])
        # mapped rows went into the same transactions (EVN-5 resolves)
        rows = SERVER.psql("SELECT COUNT(*) FROM rows r JOIN messages m ON m.id = r.msg_id",
                           self.db)
        self.assertGreater(int(rows[0][0]), 0)
        wait_for(lambda: SERVER.psql("SELECT control_id FROM rejected ORDER BY id", self.db) ==
                 [["NEW-R"]] and SERVER.psql("SELECT COUNT(*) FROM messages"
                                             " WHERE quarantined = 1", self.db) == [["0"]],
                 timeout=60, what="old rejected and quarantined messages purged")
        self.assertEqual(SERVER.psql("SELECT COUNT(*) FROM rows WHERE msg_id NOT IN"
                                     " (SELECT id FROM messages)", self.db), [["0"]])
        for d in (self.a, self.b):
            self.assertNotIn(pgserver.PASSWORD, d.log())
            d.assert_stops_cleanly()

    def test_same_message_to_both_nodes_at_once(self):
        n = 60
        acks = {self.a: [], self.b: []}
        gate = threading.Barrier(2, timeout=30)

        def sender(d):
            with d.connect() as c:
                for k in range(n):
                    gate.wait()
                    acks[d].append(c.request(make_message(f"RACE-{k}", send_app="RACE")))

        threads = [threading.Thread(target=sender, args=(d,)) for d in (self.a, self.b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for d in (self.a, self.b):
            self.assertEqual([(x.code, x.control_id_text) for x in acks[d]],
                             [("AA", f"RACE-{k}") for k in range(n)])
        counts = self.stored()
        self.assertEqual(sorted(counts), sorted(f"RACE-{k}" for k in range(n)))
        self.assertEqual(set(counts.values()), {1})
        dup = SERVER.psql("SELECT SUM(dup_count) FROM messages", self.db)
        self.assertEqual(int(dup[0][0]), n)


    def test_cluster_stats_and_a_killed_node_shown_down(self):
        with self.a.connect() as c:
            acks = [c.request(make_message(f"CL-A{k}", send_app="CL")).code for k in range(3)]
            acks.append(c.request(make_message("CL-BAD", version="9.9")).code)
        with self.b.connect() as c:
            acks += [c.request(make_message(f"CL-B{k}", send_app="CL")).code for k in range(2)]
            # a re-send of one of node-a's: AA from node-b, stored by node-a only
            acks.append(c.request(make_message("CL-A0", send_app="CL")).code)
        self.assertEqual(acks, ["AA", "AA", "AA", "AR", "AA", "AA", "AA"])
        # {node: [state, version, pid, AA, AE, AR, stored]} once both beat after the ACKs
        want = {"node-a": ["up", 3, 0, 1, 3], "node-b": ["up", 3, 0, 0, 2]}
        seen = [None]

        def counts_shown():
            rc, nodes, total, out = stats_cluster(self.a)
            seen[0] = out
            return rc == 0 and {n: [v[0]] + v[3:] for n, v in nodes.items()} == want and \
                total == [6, 0, 1, 5]
        try:
            wait_for(counts_shown, timeout=30, what="both nodes' counts in stats --cluster")
        except AssertionError as e:
            raise AssertionError(f"{e}; last output:\n{seen[0]}") from None
        rc, nodes, total, out = stats_cluster(self.b)
        self.assertEqual(rc, 0, out)
        self.assertEqual(nodes["node-a"][2], self.a.proc.pid, out)
        self.assertEqual(nodes["node-b"][2], self.b.proc.pid, out)
        self.assertRegex(nodes["node-a"][1], r"^\d", out)
        self.assertIn("cluster: 2 nodes, 2 up, 0 down", out)

        def status_cluster():
            return [(x["name"], x["state"], x["aa"], x["ar"], x["stored"])
                    for x in self.a.status()["cluster"]]
        wait_for(lambda: status_cluster() == [("node-a", "up", 3, 1, 3),
                                              ("node-b", "up", 3, 0, 2)],
                 timeout=30, what="/status cluster")

        self.b.kill()

        def b_down():
            rc, nodes, total, out = stats_cluster(self.a)
            seen[0] = out
            return nodes.get("node-b", [None])[0] == "down" and nodes["node-a"][0] == "up"
        try:
            wait_for(b_down, timeout=30, what="node-b down in stats --cluster")
        except AssertionError as e:
            raise AssertionError(f"{e}; last output:\n{seen[0]}") from None
        rc, nodes, total, out = stats_cluster(self.a)
        self.assertIn("cluster: 2 nodes, 1 up, 1 down", out)
        self.assertEqual(rc, 3, "a node down: exit status 3, for check scripts\n" + out)
        # a dead node's last counts stay in the totals
        self.assertEqual(total, [6, 0, 1, 5], out)
        wait_for(lambda: [(x["name"], x["state"]) for x in self.a.status()["cluster"]] ==
                 [("node-a", "up"), ("node-b", "down")], timeout=30, what="/status node-b down")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.a.metrics_port}/", timeout=5) as r:
            page = r.read().decode()
        self.assertRegex(page, r'<tr><td>node-b</td><td class="bad">down</td>')
        self.assertRegex(page, r'<tr><td>node-a</td><td>up</td>')
        self.a.assert_stops_cleanly()


HK_LOCK = 7401403   # store/pg_db.c STORE_PG_HOUSEKEEP_LOCK


class KeepDaemon(PgDaemon):
    """A node with the audit file sink (blocks of at most a second) and the
    retention of test_retention.py; restart_at(days) restarts it under
    libfaketime, days ahead (the server's clock stays real)."""

    def config_text(self, port):
        text = super().config_text(port)
        text = text.replace("  retention: {rejected: 1m, quarantined: 1m}",
                            "  retention_days: 7\n"
                            "  retention: {raw: 1d, delivered: 7d, quarantined: 30d,"
                            " rejected: 30d}")
        return text.replace("  audit:\n    type: none",
                            "  audit:\n    type: file\n    batch: {max_age_s: 1}\n"
                            f"    directory: {_yaml_str(self.dir / 'out')}")

    def restart_at(self, days):
        self.stop()
        self.env = {PW_ENV: pgserver.PASSWORD, **RetentionDaemon.faketime_env(days)}
        self.start()

    def retention(self):
        """{kind: entry} of /status once a housekeeping step ran, else None."""
        try:
            r = self.status()["retention"]
        except OSError:
            return None
        return {k["kind"]: k for k in r["kinds"]} if r["checked_ms"] else None


class Housekeeping(unittest.TestCase):
    """Retention and daily totals with two nodes on one database: each
    record purged once cluster-wide (the purged counts of both nodes add up
    to what was there, not twice that), no purge while another session
    holds the housekeeping lock, messages without rows purged as
    delivered; `stats --daily` counting each message once for the
    cluster."""

    def setUp(self):
        if faketime_lib() is None:
            self.skipTest("libfaketime is not installed (scripts/deps.sh test installs it)")

    def count(self, sql):
        return int(SERVER.psql(sql, self.db)[0][0])

    def test_retention_and_daily_totals_once_for_two_nodes(self):
        self.db = new_db()
        a, b = KeepDaemon(self, self.db, "node-a"), KeepDaemon(self, self.db, "node-b")
        a.start()
        b.start()
        acks = []
        with a.connect() as c:
            acks += [c.request(make_message(f"K-A{k}")).code for k in range(3)]
            acks.append(c.request(make_message("K-FA", msg_type="ORU^R01")).code)  # filtered
        with b.connect() as c:
            acks += [c.request(make_message(f"K-B{k}")).code for k in range(2)]
            acks.append(c.request(make_message("K-FB", msg_type="ORU^R01")).code)
            acks.append(c.request(make_message("K-Q").replace(b"DOE^JANE", b"")).code)
            acks.append(c.request(make_message("K-A0")).code)  # a re-send of node-a's
        self.assertEqual(acks, ["AA"] * 9)
        self.assertEqual(self.count("SELECT COUNT(*) FROM messages WHERE quarantined = 1"), 1)
        self.assertEqual(self.count("SELECT COUNT(*) FROM messages WHERE filtered = 1"), 2)
        wait_for(lambda: self.count("SELECT COUNT(*) FROM messages WHERE quarantined = 0"
                                    " AND delivered_ms IS NULL") == 0,
                 timeout=60, what="every message delivered")
        rows = self.count("SELECT COUNT(*) FROM rows")
        self.assertEqual(rows, 5)

        # +2 days, while the test holds the housekeeping lock: both nodes
        # run their steps (the oldest records are read) but neither purges.
        locker = subprocess.Popen(
            ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(SERVER.port), "-U",
             pgserver.SUPERUSER, "-d", self.db, "-c",
             f"SELECT pg_advisory_lock({HK_LOCK}); SELECT pg_sleep(120);"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, PGPASSWORD=pgserver.PASSWORD, PGAPPNAME="hb-hk-locker"))
        self.addCleanup(locker.wait, 30)

        def unlock():
            SERVER.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = 'hb-hk-locker'", "postgres")
        self.addCleanup(unlock)
        wait_for(lambda: self.count("SELECT COUNT(*) FROM pg_stat_activity WHERE"
                                    " application_name = 'hb-hk-locker' AND"
                                    " wait_event = 'PgSleep'") == 1, what="the lock taken")
        for d in (a, b):
            d.restart_at(2)
        rts = {}
        for d in (a, b):
            wait_for(lambda: d.retention() is not None, what=f"{d.node}'s housekeeping step")
            rts[d.node] = d.retention()
        for node, rt in rts.items():
            self.assertEqual(rt["raw"]["keep_s"], 86400, node)
            self.assertEqual(rt["delivered"]["keep_s"], 7 * 86400, node)
            for kind in ("raw", "delivered", "rows", "quarantined"):
                self.assertGreaterEqual(rt[kind]["oldest_age_s"], 2 * 86400 - 600, (node, kind))
                self.assertEqual(rt[kind]["purged"], 0, (node, kind))
        self.assertEqual(self.count("SELECT COUNT(*) FROM messages WHERE raw IS NOT NULL"), 8)

        # Daily totals (both nodes flushed theirs when stopped): one row for
        # the cluster, each message counted once, by the node that answered.
        env = dict(os.environ, **{PW_ENV: pgserver.PASSWORD})
        r = subprocess.run([str(a.bin), "stats", "--daily", "-c", str(b.config_path)],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=60, env=env)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("from PostgreSQL, every node: postgresql://", r.stdout)
        self.assertNotIn(pgserver.PASSWORD, r.stdout + r.stderr)
        lines = r.stdout.splitlines()
        self.assertRegex(lines[1], r"^DAY\s+LISTENER\s+SENDER\s+RECEIVED\s+AA\s+AE")
        self.assertEqual(len(lines), 3, r.stdout)
        f = lines[2].split()
        # day, listener, sender, received, AA AE AR CA CE CR, DUP, NACK%
        self.assertEqual(f[1], "it", r.stdout)
        self.assertEqual([int(x) for x in f[3:11]], [9, 9, 0, 0, 0, 0, 0, 1], r.stdout)
        self.assertEqual(self.count("SELECT COUNT(*) FROM daily_totals"), 1)
        unlock()
        # The lock gone (a restart runs a step at once, not a minute later):
        # the raw bodies of the 7 delivered messages go, once.
        a.restart_at(2)
        wait_for(lambda: self.count("SELECT COUNT(*) FROM messages WHERE raw IS NOT NULL") == 1,
                 what="raw bodies purged")

        def purged(kind):
            """The sum over both nodes (0 for a node before its first step)."""
            return sum((d.retention() or {}).get(kind, {}).get("purged", 0) for d in (a, b))
        wait_for(lambda: purged("raw") == 7, what="both nodes' raw purge counts")
        self.assertEqual(self.count("SELECT COUNT(*) FROM messages"), 8)
        self.assertEqual(self.count("SELECT COUNT(*) FROM rows"), rows)

        # +8 days: delivered messages (the filtered ones too) and their rows.
        for d in (a, b):
            d.restart_at(8)
        wait_for(lambda: self.count("SELECT COUNT(*) FROM messages WHERE quarantined = 0") == 0,
                 what="delivered messages purged")
        wait_for(lambda: self.count("SELECT COUNT(*) FROM rows") == 0, what="rows purged")
        wait_for(lambda: purged("delivered") == 7 and purged("rows") == rows,
                 what="both nodes' purge counts")
        self.assertEqual(self.count("SELECT COUNT(*) FROM messages WHERE quarantined = 1"), 1)
        for d in (a, b):
            wait_for(lambda: (d.retention() or {}).get("delivered", {}).get("oldest_ms") == 0,
                     what=f"{d.node}: no delivered message left")
            rt = d.retention()
            self.assertEqual(rt["rows"]["oldest_ms"], 0)
            self.assertGreater(rt["quarantined"]["oldest_ms"], 0)
        a.assert_stops_cleanly()
        b.assert_stops_cleanly()


class CommitFails(unittest.TestCase):
    def test_no_accept_when_commit_fails(self):
        """A transaction whose COMMIT the server refuses (a deferred
        constraint, checked only at COMMIT) is answered AE: the statements
        before it succeeded, so only the COMMIT's answer can tell."""
        db = new_db()
        d = PgDaemon(self, db, "node-a")
        d.start()
        SERVER.psql(
            "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF NEW.control_id = 'FAILCOMMIT' THEN"
            "  RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$;"
            "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON messages"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()",
            db)
        with d.connect() as c:
            self.assertEqual(c.request(make_message("BEFORE")).code, "AA")
            ack = c.request(make_message("FAILCOMMIT"))
            self.assertEqual((ack.code, ack.text), ("AE", "Cannot store message"))
            self.assertEqual(c.request(make_message("AFTER")).code, "AA")
        rows = SERVER.psql("SELECT control_id FROM messages ORDER BY id", db)
        self.assertEqual(rows, [["BEFORE"], ["AFTER"]])

        # A large group: the writer is held up by a table lock on a first
        # message while 150 messages from three connections queue behind it
        # (one group once the lock goes), one of them refused at COMMIT.
        # Whatever shared its transaction is answered AE and not stored;
        # every AA'd message is stored; each connection's ACKs come in its
        # order.
        env = dict(os.environ, PGPASSWORD=pgserver.PASSWORD)
        holder = subprocess.Popen(
            ["psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(SERVER.port), "-U",
             pgserver.SUPERUSER, "-d", db], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, text=True)
        try:
            holder.stdin.write("BEGIN;\nLOCK TABLE messages IN EXCLUSIVE MODE;\nSELECT 'held';\n")
            holder.stdin.flush()
            self.assertEqual(holder.stdout.readline().strip(), "held")
            conns = [d.connect() for _ in range(4)]
            conns[0].send(make_message("BLOCKED"))
            wait_for(lambda: SERVER.psql(
                "SELECT COUNT(*) FROM pg_locks WHERE NOT granted"
                " AND relation = 'messages'::regclass", db) != [["0"]], 60, "the writer waiting")
            sent = [[] for _ in conns]
            for i in range(150):
                ctl = "FAILCOMMIT" if i == 97 else f"G{i:03d}"
                k = 1 + i % 3
                conns[k].send(make_message(ctl))
                sent[k].append(ctl)
            wait_for(lambda: d.status()["store"]["queue_depth"] >= 151, 60, "messages queued")
            holder.stdin.write("COMMIT;\n")
            holder.stdin.close()
            holder.wait(30)
            answered = {}
            self.assertEqual(conns[0].recv_ack().code, "AA")
            for k in range(1, 4):
                for ctl in sent[k]:
                    ack = conns[k].recv_ack()
                    self.assertEqual(ack.control_id.decode(), ctl, "ACKs out of order")
                    answered[ctl] = ack.code
            for c in conns:
                c.close()
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(30)
        self.assertEqual(answered["FAILCOMMIT"], "AE")
        stored = {r[0] for r in SERVER.psql("SELECT control_id FROM messages", db)}
        for ctl, code in answered.items():
            self.assertIn(code, ("AA", "AE"), ctl)
            self.assertEqual(ctl in stored, code == "AA", f"{ctl} answered {code}")
        if os.environ.get("HB_TEST_SHOW"):
            print("AE:", sorted(c for c, v in answered.items() if v == "AE"))
        d.assert_stops_cleanly()


class WhatIsStored(unittest.TestCase):
    def test_kinds_of_message_and_a_refused_one_among_others(self):
        """Rows, filtered and rejected messages land where SQLite puts them;
        an ISO 8859-1 sender name is stored (as text) and recognised as a
        re-send; a message the server refuses (a check the test adds) gets
        AE while the messages committed beside it get AA."""
        db = new_db()
        d = PgDaemon(self, db, "node-a")
        d.start()
        SERVER.psql(
            "CREATE FUNCTION refuse_row() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF NEW.control_id LIKE 'REFUSE%' THEN"
            "  RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; END IF;"
            " RETURN NEW; END $$;"
            "CREATE TRIGGER refuse_row BEFORE INSERT ON messages FOR EACH ROW"
            " EXECUTE FUNCTION refuse_row()", db)
        latin1 = make_message("L1").replace(b"TESTFAC", b"CLIN\xc9")
        with d.connect() as c:
            self.assertEqual(c.request(latin1).code, "AA")
            self.assertEqual(c.request(latin1).code, "AA")  # a re-send
            self.assertEqual(c.request(make_message("F1", msg_type="ORU^R01")).code, "AA")
            ar = c.request(make_message("R1", version="9.9"))
            self.assertEqual(ar.code, "AR")
        results, errors = {}, []

        def sender(i):
            try:
                with d.connect() as c:
                    for k in range(15):
                        cid = f"REFUSE{i}" if k == 7 else f"G{i}-{k}"
                        results[cid] = c.request(make_message(cid)).code
            except Exception as e:
                errors.append(repr(e))

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual({c: a for c, a in results.items() if c.startswith("REFUSE")},
                         {f"REFUSE{i}": "AE" for i in range(4)})
        self.assertEqual({a for c, a in results.items() if c.startswith("G")}, {"AA"})
        rows = SERVER.psql("SELECT control_id, send_fac, filtered, dup_count, row_count"
                           " FROM messages WHERE control_id IN ('L1', 'F1') ORDER BY id", db)
        self.assertEqual(rows, [["L1", "CLIN\u00c9", "0", "1", "1"],
                                ["F1", "TESTFAC", "1", "0", "0"]])
        self.assertEqual(SERVER.psql("SELECT COUNT(*) FROM rows r JOIN messages m"
                                     " ON m.id = r.msg_id WHERE m.control_id = 'L1'", db), [["1"]])
        self.assertEqual(SERVER.psql("SELECT node, control_id, ack_code, err_code, err_where"
                                     " FROM rejected", db),
                         [["node-a", "R1", "AR", "203", "MSH^1^12"]])
        stored = {r[0] for r in SERVER.psql("SELECT control_id FROM messages", db)}
        self.assertEqual({c for c in results if c.startswith("G")} - stored, set())
        self.assertFalse(any(c.startswith("REFUSE") for c in stored))
        # `backup` copies a SQLite file: here it names the server's tools.
        r = subprocess.run([str(d.bin), "backup", "-c", str(d.config_path), str(d.dir / "b.db")],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, **d.env))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("with store.type postgresql back up the database with the server's tools"
                      " instead: pg_dump", r.stderr)
        self.assertFalse((d.dir / "b.db").exists())
        d.assert_stops_cleanly()


class ServerOutage(unittest.TestCase):
    def test_restart_while_idle_loses_no_message(self):
        """The server restarted between two messages: the connection the
        node holds is dead, but nothing of the next group reached the
        server, so it goes again on a new connection and is accepted."""
        db = new_db()
        # The restart must fall between two messages and before the node's
        # own first use of the connection (housekeeping, heartbeat: a few
        # seconds after start), which would see it and back off.  The
        # shared server holds the other tests' data: checkpoint it now, so
        # that the shutdown checkpoint is short.
        SERVER.psql("CHECKPOINT")
        d = PgDaemon(self, db, "node-a")
        d.start()
        with d.connect() as c:
            self.assertEqual(c.request(make_message("BEFORE")).code, "AA")
            SERVER.stop("fast")
            SERVER.start_again()
            ack = c.request(make_message("AFTER"))
            self.assertEqual((ack.code, ack.text), ("AA", "Message accepted"), d.log())
        self.assertEqual(SERVER.psql("SELECT control_id FROM messages ORDER BY id", db),
                         [["BEFORE"], ["AFTER"]])
        d.assert_stops_cleanly()

    def test_server_stopped_and_started_under_load(self):
        db = new_db()
        d = PgDaemon(self, db, "node-a")
        d.start()
        self.assertEqual(d.readyz(), 200)
        load = OutageLoad(d)
        t_down, t_up = load.outage(lambda: SERVER.stop("fast"), SERVER.start_again)
        load.check(self, d, SERVER, db, t_down, t_up)
        self.assertIn("event=store_unavailable", d.log())
        self.assertIn("event=store_connected", d.log())
        with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        self.assertRegex(metrics, r"(?m)^hl7bridge_store_reconnects_total [1-9]")
        self.assertRegex(metrics, r"(?m)^hl7bridge_store_unavailable 0$")
        d.assert_stops_cleanly()


class StandbyFailover(unittest.TestCase):
    def test_failover_to_a_promoted_synchronous_standby_under_load(self):
        """A primary of its own with a synchronous streaming standby; the
        node's store.url lists both hosts with target_session_attrs
        read-write.  Under load the primary is stopped as by a crash
        (immediate): AE while no server takes writes (the standby is read
        only), then the standby is promoted and the node accepts on it by
        itself.  Every AA'd message is on the new primary (AA came after a
        COMMIT the standby had flushed); the AE'd ones re-sent, every
        message once."""
        primary = pgserver.start_or_skip()
        self.addCleanup(primary.close)
        standby = primary.standby()
        self.addCleanup(standby.close)
        primary.psql("ALTER SYSTEM SET synchronous_standby_names = '*'")
        primary.psql("SELECT pg_reload_conf()")
        wait_for(lambda: primary.psql("SELECT sync_state FROM pg_stat_replication") ==
                 [["sync"]], what="the standby synchronous")
        db = primary.create_db("hbfailover")
        d = PgDaemon(self, db, "node-a")
        d.url = (f"postgresql://{pgserver.SUPERUSER}@127.0.0.1:{primary.port},"
                 f"127.0.0.1:{standby.port}/{db}?target_session_attrs=read-write")
        d.start()
        self.assertEqual(d.readyz(), 200)
        load = OutageLoad(d)
        t_down, t_up = load.outage(lambda: primary.stop("immediate"), standby.promote)
        load.check(self, d, standby, db, t_down, t_up)
        self.assertIn("event=store_connected", d.log())
        d.assert_stops_cleanly()


class OutageLoad:
    """Senders that wait for each ACK (an engine in original mode), each
    answer kept with when its message was sent and answered, until
    finish()."""

    def __init__(self, d, conns=3):
        self.d = d
        self.lock = threading.Lock()
        self.answers = []       # (control id, sent, answered, code, text)
        self.errors = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(conns)]
        for t in self.threads:
            t.start()

    def _run(self, i):
        try:
            with self.d.connect() as c:
                for k in range(20000):
                    if self.stop.is_set():
                        return
                    cid = f"L{i}-{k}"
                    t0 = time.monotonic()
                    ack = c.request(make_message(cid))
                    if ack.control_id_text != cid:
                        raise AssertionError(f"ACK for {ack.control_id_text}, sent {cid}")
                    with self.lock:
                        self.answers.append((cid, t0, time.monotonic(), ack.code, ack.text))
        except Exception as e:  # a connection closed or broken: reported by check()
            self.errors.append(repr(e))

    def count(self, code, since=0.0):
        with self.lock:
            return sum(1 for a in self.answers if a[3] == code and a[1] >= since)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def outage(self, down, back):
        """Once 100 messages are AA'd: down() (no server takes writes),
        AE and /readyz 503, back(), then AA and /readyz 200 again by
        itself; ends the load.  Returns the monotonic times after down()
        and before back()."""
        try:
            wait_for(lambda: self.count("AA") >= 100, what="first AAs")
            down()
            t_down = time.monotonic()
            try:
                wait_for(lambda: self.count("AE", since=t_down) >= 20,
                         what="AE while no server takes writes")
                wait_for(lambda: self.d.readyz() == 503, what="/readyz 503")
            finally:
                t_up = time.monotonic()
                back()
            aa_after = self.count("AA")
            wait_for(lambda: self.count("AA") > aa_after + 100, what="AA again, by itself")
            wait_for(lambda: self.d.readyz() == 200, what="/readyz 200 again")
        finally:
            self.finish()
        return t_down, t_up

    def check(self, tc, d, server, db, t_down, t_up):
        """Every message answered (no connection lost), AA or AE "Cannot
        store message" only; nothing sent once the server was down and
        answered before it came back is AA; then the engine re-sends each
        AE'd message: AA, and the store holds every message sent exactly
        once (an AE'd one may have been committed: its re-send is then a
        duplicate), nothing else."""
        tc.assertEqual(self.errors, [])
        tc.assertEqual([a for a in self.answers if (a[3], a[4]) not in
                        (("AA", "Message accepted"), ("AE", "Cannot store message"))], [])
        down = [a for a in self.answers if a[1] >= t_down and a[2] <= t_up]
        tc.assertTrue(down, "no message sent and answered while the server was down")
        tc.assertEqual([a[0] for a in down if a[3] != "AE"], [], "AA while the server was down")
        aa = [a[0] for a in self.answers if a[3] == "AA"]
        stored = {r[0]: int(r[1]) for r in
                  server.psql("SELECT control_id, COUNT(*) FROM messages GROUP BY 1", db)}
        tc.assertEqual([c for c in aa if stored.get(c) != 1], [], "AA'd but not stored once")
        again = [a[0] for a in self.answers if a[3] == "AE"]
        with d.connect() as c:
            for i in range(0, len(again), 64):
                chunk = again[i:i + 64]
                c.send_raw(b"".join(frame(make_message(cid)) for cid in chunk))
                tc.assertEqual([(x.code, x.control_id_text) for x in
                                (c.recv_ack() for _ in chunk)], [("AA", cid) for cid in chunk])
        stored = {r[0]: int(r[1]) for r in
                  server.psql("SELECT control_id, COUNT(*) FROM messages GROUP BY 1", db)}
        tc.assertEqual(sorted(stored), sorted(a[0] for a in self.answers))
        tc.assertEqual({c: n for c, n in stored.items() if n != 1}, {})


class SchemaAndCheck(unittest.TestCase):
    def setUp(self):
        self.bin = require_binary(self)

    def test_cluster_needs_postgresql(self):
        d = Daemon(self)
        d.config_path.write_text(d.config_text(free_port()))
        rc, nodes, total, out = stats_cluster(d)
        self.assertEqual(rc, 1, out)
        self.assertIn("needs store.type postgresql", out)

    def cmd(self, d, *args):
        import subprocess
        env = dict(os.environ, **(d.env or {}))
        return subprocess.run([str(self.bin)] + list(args) + ["-c", str(d.config_path)],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                              env=env)

    def write(self, d):
        d.config_path.write_text(d.config_text(free_port()))

    def test_schema_newer_than_known_refused(self):
        db = new_db()
        SERVER.psql("CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
                    " applied_ms BIGINT NOT NULL, node TEXT);"
                    "INSERT INTO schema_version VALUES (999, 0, 'future')", db)
        d = PgDaemon(self, db, "node-a")
        self.write(d)
        r = self.cmd(d, "check")
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"database schema 999 is newer than this build", r.stderr)
        r = self.cmd(d, "run")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"newer than this build", r.stdout + r.stderr)
        # nothing was created beside the newer schema
        self.assertEqual(SERVER.psql("SELECT to_regclass('messages') IS NULL", db), [["t"]])

    def test_check_reports_what_is_wrong(self):
        db = new_db()
        d = PgDaemon(self, db, "node-a")
        self.write(d)
        r = self.cmd(d, "check")
        self.assertEqual(r.returncode, 0, r)
        self.assertIn(b"PostgreSQL 15, schema 0 of", r.stdout)
        self.assertIn(b"node node-a", r.stdout)
        # a wrong password: the server says so, the password is not shown
        d.env = {PW_ENV: "not-the-password"}
        r = self.cmd(d, "check")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"password authentication failed", r.stderr)
        self.assertNotIn(b"not-the-password", r.stdout + r.stderr)
        # no server on that port
        d.env = {PW_ENV: pgserver.PASSWORD}
        d.config_path.write_text(d.config_text(free_port()).replace(
            f":{SERVER.port}/", f":{free_port()}/"))
        r = self.cmd(d, "check")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"cannot connect to postgresql://hb@127.0.0.1:", r.stderr)
        self.assertIn(b"Connection refused", r.stderr)

    def test_password_sources_and_sinks_accepted(self):
        d = PgDaemon(self, "unused", "node-a")
        pwfile = d.dir / "pgpass"
        pwfile.write_text(pgserver.PASSWORD + "\n")
        os.chmod(pwfile, 0o644)
        base = d.config_text(free_port())
        d.config_path.write_text(base.replace(f"  password: ${{{PW_ENV}}}",
                                              f"  password_file: {_yaml_str(pwfile)}"))
        r = self.cmd(d, "check")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"password_file", r.stderr)
        self.assertIn(b"0644", r.stderr)
        # owner-only: accepted (the server is not needed to load it)
        os.chmod(pwfile, 0o600)
        r = self.cmd(d, "check")
        self.assertNotIn(b"password_file", r.stderr)
        # a password written into the url
        d.config_path.write_text(base.replace("postgresql://hb@", "postgresql://hb:sekrit@"))
        r = self.cmd(d, "check")
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"store.url: holds a password", r.stderr)
        self.assertNotIn(b"sekrit", r.stdout + r.stderr)
        # the audit and SMS sinks run on PostgreSQL: neither is refused
        d.config_path.write_text(base.replace("    type: none\n", "    type: file\n"))
        r = self.cmd(d, "check")
        self.assertNotIn(b"sinks.audit", r.stderr)
        self.assertNotIn(b"sinks.sms", r.stderr)


if __name__ == "__main__":
    unittest.main()
