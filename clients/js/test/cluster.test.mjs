// The packed @switchboard/client in node against a real cluster (Redis, Daphne replicas, HAProxy):
// a connection token instead of a session, pushes delivered once and in order, a resume across
// clients through a shared storage, and a tampered token refused for good.
//
// Run by tests/cluster/test_js_package.py, which packs the package, unpacks it and passes:
//   SB_CLIENT_MODULE  the unpacked package's folder      SB_URL        the cluster's base URL
//   SB_TOKEN          a connection token for SB_USER     SB_API_TOKEN  an API token, to push
//   SB_USER           the user the token is for
//   node --experimental-websocket --test clients/js/test/cluster.test.mjs
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";

const { SB_CLIENT_MODULE, SB_URL, SB_TOKEN, SB_API_TOKEN, SB_USER } = process.env;
const missing = ["SB_CLIENT_MODULE", "SB_URL", "SB_TOKEN", "SB_API_TOKEN", "SB_USER"].filter(
  (name) => !process.env[name],
);
const skip = missing.length ? `run by tests/cluster/test_js_package.py (${missing.join(", ")} unset)` : false;

const WAIT_MS = 10_000; // one condition; the server answers in milliseconds
const TEST_MS = 60_000;

// The package as a consumer resolves it: package.json's exports["."], types beside it.
async function importPackage(folder) {
  const manifest = JSON.parse(readFileSync(join(folder, "package.json"), "utf8"));
  const entry = manifest.exports["."];
  readFileSync(join(folder, entry.types)); // shipped, or this throws
  return import(pathToFileURL(join(folder, entry.default)).href);
}

const client = skip ? null : await importPackage(SB_CLIENT_MODULE);

// Every event of a client, and waits for a condition over them, re-checked on each event.
function record(realtime) {
  const log = { open: [], messages: [], states: [], errors: [], resumed: [], resets: [], waiters: new Set() };
  const on = (type, list) => realtime.addEventListener(type, (event) => {
    list.push(event.detail);
    for (const check of [...log.waiters]) check();
  });
  on("open", log.open);
  on("message", log.messages);
  on("state", log.states);
  on("error", log.errors);
  on("resumed", log.resumed);
  on("reset", log.resets);
  return log;
}

function until(log, condition, what, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      log.waiters.delete(check);
    };
    const check = () => {
      const value = condition();
      if (value) {
        done();
        resolve(value);
      }
    };
    const timer = setTimeout(() => {
      done();
      const states = log.states.map((s) => s.state).join(" -> ");
      reject(new Error(`timed out after ${ms} ms waiting for ${what} (states: ${states})`));
    }, ms);
    log.waiters.add(check);
    check();
  });
}

// POST /api/push as a service would: the user's stream gets {n}; answers the publish's seq.
async function push(n) {
  const answer = await fetch(`${SB_URL}/api/push`, {
    method: "POST",
    headers: { Authorization: `Bearer ${SB_API_TOKEN}`, "Content-Type": "application/json" },
    body: JSON.stringify({ user: SB_USER, payload: { n } }),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const body = await answer.text();
  assert.equal(answer.status, 200, `POST /api/push answered ${answer.status}: ${body}`);
  return JSON.parse(body);
}

// The token with its claims changed (another user) and its signature kept.
function tampered(token) {
  const [header, payload, signature] = token.split(".");
  const claims = JSON.parse(Buffer.from(payload, "base64url").toString());
  claims.sub = String(Number(claims.sub) + 1);
  return [header, Buffer.from(JSON.stringify(claims)).toString("base64url"), signature].join(".");
}

function userStream(log) {
  return `user:${log.open[0].userId}`;
}

function payloadsOn(log, stream) {
  return log.messages.filter((frame) => frame.stream === stream).map((frame) => frame.payload.n);
}

test(
  "pushes reach a token client once each, in order; a later client given its storage gets only what it missed",
  { skip, timeout: TEST_MS },
  async () => {
    const { RealtimeClient, MemoryStorage } = client;
    const storage = new MemoryStorage();
    let asked = 0;
    const token = async () => {
      asked += 1;
      return SB_TOKEN;
    };
    const clients = [];
    const connect = () => {
      const realtime = new RealtimeClient({ url: SB_URL, token, storage });
      clients.push(realtime);
      const log = record(realtime);
      realtime.connect();
      return { realtime, log };
    };
    try {
      const a = connect();
      const hello = await until(a.log, () => a.log.open[0], "A's hello");
      assert.equal(hello.user, SB_USER);
      assert.equal(asked, 1, "the token function is asked once per connect");
      const stream = userStream(a.log);
      const first = [];
      for (const n of [1, 2, 3]) first.push(await push(n));
      await until(a.log, () => payloadsOn(a.log, stream).length >= 3, "3 pushes on A");
      assert.deepEqual(payloadsOn(a.log, stream), [1, 2, 3]);
      const seqs = a.log.messages.filter((f) => f.stream === stream).map((f) => f.seq);
      assert.deepEqual(seqs, first.map((result) => result.seq));
      assert.equal(JSON.parse(storage.getItem("switchboard.positions"))[stream].seq, first[2].seq);
      a.realtime.close();
      assert.equal(a.realtime.state, "closed");

      // Pushed while no client is connected: B must get these from the server's history.
      const missed = [await push(4), await push(5)];
      const b = connect();
      await until(b.log, () => payloadsOn(b.log, stream).length >= 2, "the 2 missed pushes on B");
      // Delivery is in order: once a push made now arrives, nothing replayed is still on its way.
      const barrier = await push(6);
      await until(b.log, () => payloadsOn(b.log, stream).includes(6), "the live push on B");
      assert.deepEqual(payloadsOn(b.log, stream), [4, 5, 6], "exactly the missed ones, once each");
      const seqs2 = b.log.messages.filter((f) => f.stream === stream).map((f) => f.seq);
      assert.deepEqual(seqs2, [...missed, barrier].map((result) => result.seq));
      const resumed = b.log.resumed.find((frame) => frame.stream === stream);
      assert.ok(resumed, "B resumed its user stream (?resume= from A's positions)");
      assert.equal(resumed.recovered, true);
      assert.equal(resumed.replayed, 2);
      assert.deepEqual(b.log.resets, []);
      assert.equal(asked, 2);
    } finally {
      for (const realtime of clients) realtime.close();
    }
  },
);

test(
  "a tampered token ends in state unauthorized with the error bad_token, for good",
  { skip, timeout: TEST_MS },
  async () => {
    const { RealtimeClient } = client;
    const realtime = new RealtimeClient({ url: SB_URL, token: tampered(SB_TOKEN), storage: null });
    const log = record(realtime);
    try {
      realtime.connect();
      const refused = await until(
        log,
        () => log.states.find((s) => s.state === "unauthorized"),
        "state unauthorized",
      );
      assert.equal(refused.code, 4401);
      assert.equal(refused.error, "bad_token");
      assert.match(refused.message, /token/);
      assert.deepEqual(log.errors.map((frame) => frame.code), ["bad_token"]);
      assert.deepEqual(log.open, []);
      assert.equal(realtime.final, true, "no reconnect after a 4401");
      assert.equal(realtime.socket, null);
    } finally {
      realtime.close();
    }
  },
);
