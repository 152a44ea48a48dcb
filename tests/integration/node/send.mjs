// A second, independent HL7 MLLP client for hl7bridge's integration tests,
// built on npm's node-hl7-client (not written by us).
//
//   node send.mjs --port PORT [--host 127.0.0.1] [--count N] [--prefix ID] [--timeout-ms MS] [FILE...]
//
// Builds --count messages with the library's Message builder (ADT^A01,
// MSH-10 = PREFIX + index), then sends each FILE's text parsed by the
// library, one at a time on one connection, waiting for each ACK.
// Prints one JSON line per ACK: {"sent": <MSH-10 sent>, "msa1": ..., "msa2": ...}
// and finally {"done": true, "sent": N, "acked": M}.  Exit status 0 when
// every message got an ACK, 1 otherwise (timeout, connection error).
import { readFileSync } from "node:fs";
import { Client, Message } from "node-hl7-client";

function parseArgs(argv) {
  const o = { host: "127.0.0.1", port: 0, count: 3, prefix: "NODE", timeoutMs: 10000, files: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`missing value for ${a}`);
      return argv[++i];
    };
    if (a === "--host") o.host = next();
    else if (a === "--port") o.port = Number(next());
    else if (a === "--count") o.count = Number(next());
    else if (a === "--prefix") o.prefix = next();
    else if (a === "--timeout-ms") o.timeoutMs = Number(next());
    else if (a.startsWith("--")) throw new Error(`unknown option ${a}`);
    else o.files.push(a);
  }
  if (!Number.isInteger(o.port) || o.port <= 0) throw new Error("--port is required");
  return o;
}

function buildMessages(o) {
  const out = [];
  for (let i = 1; i <= o.count; i++) {
    const id = `${o.prefix}${String(i).padStart(4, "0")}`;
    const m = new Message({
      messageHeader: {
        msh_9_1: "ADT",
        msh_9_2: "A01",
        msh_10: id,
        msh_11_1: "P",
      },
    });
    m.set("MSH.3", "NODECLIENT");
    m.set("MSH.4", "NODEFAC");
    m.set("MSH.5", "HL7BRIDGE");
    m.set("MSH.6", "HL7BRIDGE");
    const pid = m.addSegment("PID");
    pid.set(1, "1");
    pid.set(3, `MRN${i}`);
    pid.set(5, "DOE^JANE");
    out.push({ id, msg: m });
  }
  for (const f of o.files) {
    const text = readFileSync(f, "utf-8").replace(/^\uFEFF/, "").replace(/\r\n|\n/g, "\r").replace(/\r+$/, "");
    const m = new Message({ text });
    out.push({ id: m.get("MSH.10").toString(), msg: m });
  }
  return out;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const messages = buildMessages(o);
  const client = new Client({ host: o.host });
  let waiter = null;
  const conn = client.createConnection({ port: o.port, waitAck: true, maxConnectionAttempts: 1 }, async (res) => {
    const ack = res.getMessage();
    const r = { msa1: ack.get("MSA.1").toString(), msa2: ack.get("MSA.2").toString() };
    if (waiter) {
      const w = waiter;
      waiter = null;
      w(r);
    }
  });
  conn.on("client.error", (e) => process.stderr.write(`client.error: ${e}\n`));
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("connect timeout")), o.timeoutMs);
    conn.once("connect", () => {
      clearTimeout(t);
      resolve();
    });
  });
  let acked = 0;
  let ok = true;
  for (const { id, msg } of messages) {
    const got = new Promise((resolve) => {
      waiter = resolve;
    });
    await conn.sendMessage(msg);
    const r = await Promise.race([
      got,
      new Promise((resolve) => setTimeout(() => resolve(null), o.timeoutMs)),
    ]);
    if (!r) {
      process.stdout.write(JSON.stringify({ sent: id, error: "timeout" }) + "\n");
      ok = false;
      break;
    }
    acked++;
    process.stdout.write(JSON.stringify({ sent: id, ...r }) + "\n");
  }
  process.stdout.write(JSON.stringify({ done: true, sent: messages.length, acked }) + "\n");
  await conn.close();
  client.closeAll();
  process.exit(ok && acked === messages.length ? 0 : 1);
}

main().catch((e) => {
  process.stderr.write(`send.mjs: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
