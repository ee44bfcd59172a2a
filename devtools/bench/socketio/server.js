"use strict";
// The Socket.IO peer of `manage.py bench --peer socketio`: one replica of a Socket.IO 4
// cluster (the Redis adapter, pub/sub), serving what the bench's workloads use of Switchboard's
// API so the same client program measures both:
//
//   WebSocket   /socket.io/?EIO=4&transport=websocket, auth {user, token} in the CONNECT
//               packet, token = hex HMAC-SHA256(BENCH_SECRET, user). The socket joins the
//               rooms `user:<name>` and `broadcast`, then gets a `hello` event.
//   POST        /api/broadcast {payload}, /api/push {user, payload},
//               /api/push/batch {messages: [{user, payload}]}  (Authorization: Bearer BENCH_API_TOKEN)
//               answer {stream, seq} (batch: {results: [...]}), and emit the event `m`:
//               {stream, seq, sent_at (epoch ms), payload}.
//   GET         /healthz, /readyz (HAProxy's check: Redis connected)
//
// Numbering is per process: streams are `broadcast@<replica>` and `user:<name>@<replica>`,
// each with an in-process counter. Socket.IO has no sequence numbers, and one shared counter
// would add a Redis round trip per publish that Socket.IO itself never pays; per publisher,
// a client still sees every stream's seqs in order (one publisher, one Redis connection).
//
// Environment: PORT (or argv[2]), REPLICA_ID, REPLICA_IDS (every replica, comma-separated:
// the hello names them so a client tracks each publisher's streams from the start),
// REDIS_URL, BENCH_SECRET, BENCH_API_TOKEN.

const crypto = require("node:crypto");
const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const PORT = Number(process.argv[2] || process.env.PORT);
const REPLICA = process.env.REPLICA_ID || "d1";
const REPLICAS = (process.env.REPLICA_IDS || REPLICA).split(",");
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";
const SECRET = process.env.BENCH_SECRET || "";
const API_TOKEN = Buffer.from(`Bearer ${process.env.BENCH_API_TOKEN || ""}`);
// As our API: bodies above 1 MiB are refused.
const MAX_BODY_BYTES = 1 << 20;

if (!PORT || !SECRET || !process.env.BENCH_API_TOKEN) {
  console.error("server.js needs PORT (or argv[2]), BENCH_SECRET and BENCH_API_TOKEN");
  process.exit(2);
}

// --- numbering ----------------------------------------------------------------------------

const positions = new Map(); // stream -> last seq this process gave out

function nextSeq(stream) {
  const seq = (positions.get(stream) || 0) + 1;
  positions.set(stream, seq);
  return seq;
}

// --- auth ---------------------------------------------------------------------------------

function expectedToken(user) {
  return crypto.createHmac("sha256", SECRET).update(user).digest();
}

// Constant time, and no exception for a token of the wrong length or encoding.
function validToken(user, token) {
  if (typeof user !== "string" || typeof token !== "string" || token.length !== 64) {
    return false;
  }
  const given = Buffer.from(token, "hex");
  const wanted = expectedToken(user);
  return given.length === wanted.length && crypto.timingSafeEqual(given, wanted);
}

function validBearer(header) {
  const given = Buffer.from(header || "");
  return given.length === API_TOKEN.length && crypto.timingSafeEqual(given, API_TOKEN);
}

// --- the HTTP API -------------------------------------------------------------------------

let io; // set below; the HTTP server must exist first for Socket.IO to attach to it
let redisReady = false;

function answer(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "Content-Type": "application/json",
    "Content-Length": Buffer.byteLength(text),
  });
  res.end(text);
}

function readJson(req, res, then) {
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      answer(res, 413, { ok: false, error: "body_too_large" });
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      answer(res, 400, { ok: false, error: "bad_json" });
      return;
    }
    then(body);
  });
}

function publish(room, stream, payload) {
  const seq = nextSeq(stream);
  io.to(room).emit("m", { stream, seq, sent_at: Date.now(), payload });
  return { stream, seq };
}

function pushOne(message) {
  const user = message && message.user;
  if (typeof user !== "string" || !user) {
    return null;
  }
  return publish(`user:${user}`, `user:${user}@${REPLICA}`, message.payload ?? {});
}

const routes = {
  "/api/broadcast": (body) => publish("broadcast", `broadcast@${REPLICA}`, body.payload ?? {}),
  "/api/push": (body) => pushOne(body),
  "/api/push/batch": (body) => {
    if (!Array.isArray(body.messages)) {
      return null;
    }
    const results = body.messages.map(pushOne);
    return results.includes(null) ? null : { results };
  },
};

function handle(req, res) {
  const path = req.url.split("?", 1)[0];
  if (req.method === "GET" && (path === "/healthz" || path === "/readyz")) {
    // Ready: Redis connected, so a publish here reaches the other replicas' sockets.
    const ready = path === "/healthz" || redisReady;
    answer(res, ready ? 200 : 503, {
      replica: REPLICA,
      ready,
      connections: io.engine.clientsCount,
    });
    return;
  }
  const route = routes[path];
  if (req.method !== "POST" || route === undefined) {
    answer(res, 404, { ok: false, error: "not_found" });
    return;
  }
  if (!validBearer(req.headers.authorization)) {
    answer(res, 401, { ok: false, error: "unauthorized" });
    return;
  }
  readJson(req, res, (body) => {
    const result = body && typeof body === "object" ? route(body) : null;
    if (result === null) {
      answer(res, 400, { ok: false, error: "bad_request" });
    } else {
      answer(res, 200, result);
    }
  });
}

// --- Socket.IO ----------------------------------------------------------------------------

const httpServer = http.createServer(handle);
// Longer than HAProxy keeps an idle server connection, so Node never closes one HAProxy is
// about to reuse (a 502 that would count as a publish error).
httpServer.keepAliveTimeout = 65_000;
httpServer.headersTimeout = 66_000;

io = new Server(httpServer, {
  transports: ["websocket"], // the bench's clients speak WebSocket only, as ours do
  serveClient: false,
  perMessageDeflate: false, // as ours: no compression
  allowEIO3: false,
});

io.use((socket, next) => {
  const { user, token } = socket.handshake.auth || {};
  if (!validToken(user, token)) {
    next(new Error("unauthorized"));
    return;
  }
  socket.data.user = user;
  next();
});

io.on("connection", (socket) => {
  const user = socket.data.user;
  socket.join(["broadcast", `user:${user}`]);
  // The positions of this process's streams for this socket; the other replicas' streams
  // start at 0 for a client that connected before anything was published (the bench's case).
  const broadcast = `broadcast@${REPLICA}`;
  const own = `user:${user}@${REPLICA}`;
  socket.emit("hello", {
    replica: REPLICA,
    replicas: REPLICAS,
    streams: { [broadcast]: positions.get(broadcast) || 0, [own]: positions.get(own) || 0 },
  });
});

async function main() {
  const pubClient = createClient({ url: REDIS_URL });
  const subClient = pubClient.duplicate();
  for (const client of [pubClient, subClient]) {
    // An unhandled `error` event would end the process; the readiness check reports it instead.
    client.on("error", (err) => console.error(`redis: ${err.message}`));
    client.on("ready", () => {
      redisReady = pubClient.isReady && subClient.isReady;
    });
    client.on("end", () => {
      redisReady = false;
    });
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);
  redisReady = true;
  io.adapter(createAdapter(pubClient, subClient));
  httpServer.listen(PORT, "127.0.0.1", () => {
    console.log(`socket.io replica ${REPLICA} listening on 127.0.0.1:${PORT}`);
  });
  // SIGTERM (the runner's stop): close the sockets and go.
  process.on("SIGTERM", () => {
    io.close();
    Promise.allSettled([pubClient.quit(), subClient.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
