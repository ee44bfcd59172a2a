// Switchboard's browser client: one WebSocket to /ws/ (or, where WebSockets are blocked, Server-
// Sent Events from /sse/ with frames POSTed back), resumable streams, an outbox, events. The same
// file runs outside a page (node, published as @switchboard/client from clients/js/): give it the
// site's `url` and a connection `token` instead of a page's location and session cookie.
//
//   const client = new RealtimeClient();          // in a page: this site, the session's user
//   const client = new RealtimeClient({ url: "https://example.com", token: fetchToken });  // node
//   client.addEventListener("message", (e) => show(e.detail));   // stream frames, once, in order
//   client.subscribe("room:lobby", { epoch, seq });               // resume from a known position
//   await client.publish("room:lobby", { kind: "chat", text });   // resolves with the server's ack
//   client.close();                                               // final
//
// Events (CustomEvent, frame or facts in `detail`):
//   state      {state: "connecting" | "open" | "waiting" | "unauthorized" | "closed", ...};
//              unauthorized (close 4401, final) carries the error frame's code that came first
//              ({code: 4401, error: "bad_token", message}): get a new token or log in again
//   open       {replica, previousReplica, user, userId}     after every (re)connect's hello
//   message    a stream frame (push, message, broadcast, ...) never seen before on this tab
//   subscribed / resumed / ack / error / pong   the server's frames
//   reset      a resumed frame with recovered: false: messages were lost, reload your state
//   <type>     any other frame by its type (presence, typing, lab, echo, ...)
//
// The frames, their fields and the close codes are realtime/protocol.py's table; a unit test
// (tests/unit/test_protocol_table.py) checks that the switch in _onFrame, STREAM_FRAME_TYPES,
// CLOSE_UNAUTHORIZED and TRY_LATER_CODES match it.
//
// Positions ({stream: {epoch, seq}}) live in sessionStorage, so a reload of the page resumes
// where it was: the server replays what was missed before any live frame (?resume= in the URL).
//
// Options besides DEFAULTS' tunables, for use outside a page (each unset in a page):
//   url        the site's base URL ("https://example.com"): the WebSocket's is made from it
//              (http -> ws, https -> wss) and `path`, the SSE transport's from it too; unset, the
//              page's location.
//   token      a connection token (POST /api/connect-token), or a function (may be async) asked
//              for a fresh one before every connect, as the Python client's token= is: sent as
//              ?token=. A 4401 is final with a token too (the Python client's rule): its error
//              frame says why (bad_token: expired or not ours), and a new client takes it from
//              there. Over SSE the token opens the stream (?token=) and rides on each POST of
//              the client's frames as `Authorization: Bearer` (no cookie, no CSRF).
//   WebSocket  the constructor to use instead of globalThis.WebSocket (node 20 has one only with
//              --experimental-websocket; or the `ws` package's).
//   storage    where positions are kept: any object with getItem/setItem (Web Storage's). By
//              default sessionStorage where there is one, else a MemoryStorage of this client's
//              own; null keeps none (positions then last as long as the client).

export const DEFAULTS = Object.freeze({
  path: "/ws/",
  // "auto": a WebSocket, and Server-Sent Events once WebSockets failed `sseAfterFailures` times
  // in a row without ever opening (a proxy or firewall that blocks them); "websocket" or "sse"
  // to choose. The SSE stream is GET `ssePath`; the client's frames go to POST `sseSendPath`.
  transport: "auto",
  sseAfterFailures: 3,
  ssePath: "/sse/",
  sseSendPath: "/sse/send",
  // Reconnect delay: random(0, min(cap, base * 2^attempt)) — "full jitter", so the clients of a
  // replica that died do not all return in the same instant.
  backoffBaseMs: 300,
  backoffCapMs: 15000,
  // 1013 / 4503 / 4429 "try again later": the server is short of something (or the user has
  // too many connections open); start from a longer wait.
  tryLaterBaseMs: 2000,
  // The retry count resets only after a connection stayed up this long, so a replica that
  // accepts and then drops at once does not get hammered at the base delay.
  minUptimeMs: 5000,
  // Ping after this long without any frame; declare the peer dead if nothing answers in time.
  // 20 s: well inside the 60 s after which NATs and proxies drop idle connections.
  heartbeatMs: 20000,
  deadPeerMs: 8000,
  // Unacknowledged publishes kept for resending after a reconnect; beyond this, publish() fails
  // at once instead of growing without bound while offline.
  outboxMax: 100,
  // Received seqs are acknowledged to the server at most this often (batched, highest per stream).
  ackBatchMs: 1000,
  storageKey: "switchboard.positions",
  // Ask for ephemeral frames (typing, presence): the chat page wants them, other pages need not.
  ephemeral: false,
  debug: false,
  logPrefix: "[switchboard]",
});

const OPEN = 1; // WebSocket.OPEN, and EventStreamSocket's
const CLOSE_UNAUTHORIZED = 4401;
const TRY_LATER_CODES = new Set([1013, 4503, 4429]);
const STREAM_FRAME_TYPES = new Set(["push", "message", "broadcast", "ops"]);

export function newId() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Web Storage's getItem/setItem in memory: positions outside a page, or shared by the clients
// given the same one (a client made later resumes where an earlier one stopped).
export class MemoryStorage {
  constructor() {
    this._items = new Map();
  }

  getItem(key) {
    return this._items.has(key) ? this._items.get(key) : null;
  }

  setItem(key, value) {
    this._items.set(key, String(value));
  }

  removeItem(key) {
    this._items.delete(key);
  }
}

function defaultStorage() {
  try {
    if (typeof sessionStorage !== "undefined") return sessionStorage;
  } catch {
    /* storage disabled for this page (a sandboxed frame): reading it throws */
  }
  return new MemoryStorage();
}

export class RealtimeClient extends EventTarget {
  constructor(options = {}) {
    super();
    this.options = Object.freeze({ ...DEFAULTS, ...options });
    this.storage = options.storage === undefined ? defaultStorage() : options.storage;
    if (!this.options.url && typeof location === "undefined") {
      throw new Error('outside a page, give the site\'s base URL: new RealtimeClient({ url: "https://…" })');
    }
    if (this.options.transport === "sse" && typeof EventSource === "undefined") {
      throw new Error('transport "sse" needs EventSource, which this runtime lacks: use "websocket"');
    }
    if (this.options.transport !== "sse" && !this.options.WebSocket && typeof WebSocket === "undefined") {
      throw new Error(
        "no WebSocket in this runtime: pass the WebSocket option (the ws package's), or run node "
        + "with --experimental-websocket (node 20; node 22 has it by default)",
      );
    }
    this.positions = this._load();
    this.wanted = new Set(); // streams beyond the user's own ones (which the server always adds)
    this.outbox = new Map(); // id -> {frame, resolve, reject}
    this.pendingAcks = new Map(); // stream -> highest seq received and not yet acknowledged
    this.attempt = 0;
    this.socket = null;
    this.replica = null;
    this.state = "idle";
    this.final = false;
    this.stats = { duplicates: 0, reconnects: 0, delivered: 0, moves: 0 };
    this._timers = {};
    this.transport = this.options.transport === "sse" ? "sse" : "websocket";
    this._failedOpens = 0; // WebSockets in a row that closed before their hello
    this._askingToken = false; // a token function's answer is awaited: connect() waits for it
    this._lastError = null; // the current socket's last error frame (a 4401 reports its code)
  }

  // --- public API ------------------------------------------------------------------------------

  connect() {
    if (this.final || this.socket || this._askingToken) return this;
    this._setState("connecting", { attempt: this.attempt, transport: this.transport });
    const token = this.options.token;
    if (typeof token !== "function") {
      this._open(token || "");
      return this;
    }
    // Asked before every connect: a token is checked at the handshake only, and expires.
    this._askingToken = true;
    Promise.resolve()
      .then(() => token())
      .then((fresh) => {
        if (typeof fresh === "string" && fresh) return fresh;
        throw new TypeError(`the token function returned ${typeof fresh}, not a token string`);
      })
      .then(
        (fresh) => {
          this._askingToken = false;
          if (!this.final) this._open(fresh);
        },
        (error) => {
          this._askingToken = false;
          if (this.final) return;
          this.debug("the token function failed:", error);
          this._retry(this._delay(this.options.backoffBaseMs, this.attempt++), 0, { error: String(error) });
        },
      );
    return this;
  }

  // Read `stream` (room:<slug>). `from` ({epoch, seq}) says what the page already shows; without
  // it a stored position is used, or the stream starts at its head.
  subscribe(stream, from = undefined) {
    this.wanted.add(stream);
    if (from) this._setPosition(stream, from.epoch, from.seq);
    const position = this.positions[stream];
    this._send({ type: "subscribe", stream, ...(position ? { from: position } : {}) });
  }

  unsubscribe(stream) {
    this.wanted.delete(stream);
    delete this.positions[stream];
    this._save();
    this._send({ type: "unsubscribe", stream });
  }

  // Publish with a client-made id; kept in the outbox and resent after a reconnect until the
  // server acknowledges it (the server publishes a repeated id only once). Resolves with the ack.
  publish(stream, payload, { id = newId() } = {}) {
    if (this.final) return Promise.reject(new Error("the client is closed"));
    if (this.outbox.size >= this.options.outboxMax) {
      return Promise.reject(new Error(`outbox full (${this.options.outboxMax} unacknowledged)`));
    }
    const frame = { type: "publish", id, stream, payload };
    return new Promise((resolve, reject) => {
      this.outbox.set(id, { frame, resolve, reject });
      this._send(frame);
    });
  }

  // Fire and forget (typing indicators): sent only if connected, never resent.
  publishVolatile(stream, payload) {
    return this._send({ type: "publish", id: newId(), stream, payload });
  }

  // Any other protocol frame (echo, ping): sent only if connected; true when it was.
  send(frame) {
    return this._send(frame);
  }

  // Final: no reconnect after this; unacknowledged publishes are rejected.
  close() {
    if (this.final) return;
    this.final = true;
    this._flushAcks();
    for (const name of Object.keys(this._timers)) this._clear(name);
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onclose = null;
      socket.close(1000, "client closed");
    }
    for (const entry of this.outbox.values()) entry.reject(new Error("the client was closed"));
    this.outbox.clear();
    this._setState("closed", {});
  }

  debug(...args) {
    if (this.options.debug) console.debug(this.options.logPrefix, ...args);
  }

  // --- frames from the server ------------------------------------------------------------------

  _onFrame(text) {
    this._lastFrameAt = Date.now();
    this._clear("deadPeer");
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.debug("dropped a frame that is not JSON");
      return;
    }
    if (typeof frame.seq === "number" && typeof frame.stream === "string" && STREAM_FRAME_TYPES.has(frame.type)) {
      this._onStreamFrame(frame);
      return;
    }
    switch (frame.type) {
      case "hello":
        return this._onHello(frame);
      case "subscribed":
        this._setPosition(frame.stream, frame.epoch, frame.seq);
        break;
      case "resumed":
        this._onResumed(frame);
        break;
      case "ack":
        this._onAck(frame);
        break;
      case "error":
        this._onError(frame);
        break;
      case "reconnect":
        this._onReconnectAsked(frame);
        break;
      default:
        break;
    }
    this._emit(frame.type, frame);
  }

  _onHello(frame) {
    this._failedOpens = 0;
    const previousReplica = this.replica;
    this.replica = frame.replica;
    this.userId = frame.user_id;
    this._setState("open", { replica: frame.replica });
    // Streams the server placed at their head (no position of ours): start counting from there.
    for (const [stream, position] of Object.entries(frame.streams || {})) {
      if (!this.positions[stream]) this._setPosition(stream, position.epoch, position.seq);
    }
    for (const stream of this.wanted) {
      if (!(stream in (frame.streams || {}))) {
        const position = this.positions[stream];
        this._send({ type: "subscribe", stream, ...(position ? { from: position } : {}) });
      }
    }
    for (const { frame: pending } of this.outbox.values()) this._send(pending);
    this._startHeartbeat();
    this._timers.uptime = setTimeout(() => { this.attempt = 0; }, this.options.minUptimeMs);
    if (previousReplica) this.stats.reconnects += 1;
    this.debug("hello from", frame.replica, previousReplica ? `(was ${previousReplica})` : "");
    this._emit("open", { replica: frame.replica, previousReplica, user: frame.user, userId: frame.user_id });
  }

  _onStreamFrame(frame) {
    const known = this.positions[frame.stream];
    if (known && known.epoch === frame.epoch && frame.seq <= known.seq) {
      this.stats.duplicates += 1;
      this.debug("duplicate dropped", frame.stream, frame.seq);
      return;
    }
    this._setPosition(frame.stream, frame.epoch, frame.seq);
    this.stats.delivered += 1;
    this.pendingAcks.set(frame.stream, frame.seq);
    if (!this._timers.ack) this._timers.ack = setTimeout(() => this._flushAcks(), this.options.ackBatchMs);
    this._emit("message", frame);
  }

  _onResumed(frame) {
    const known = this.positions[frame.stream];
    if (!frame.recovered) {
      this._setPosition(frame.stream, frame.epoch, frame.seq);
      this.debug("stream reset", frame.stream, frame.reason);
      this._emit("reset", frame);
    } else if (!known || known.epoch !== frame.epoch || known.seq < frame.seq) {
      this._setPosition(frame.stream, frame.epoch, frame.seq);
    }
  }

  _onAck(frame) {
    const entry = frame.id && this.outbox.get(frame.id);
    if (entry) {
      this.outbox.delete(frame.id);
      entry.resolve(frame);
    }
  }

  _onError(frame) {
    this.debug("error frame", frame.code, frame.message);
    this._lastError = frame;
    if (frame.code === "access_revoked" && frame.stream) {
      // Taken away by the server: asking for it again after a reconnect would only be refused.
      this.wanted.delete(frame.stream);
      delete this.positions[frame.stream];
      this._save();
    }
    const entry = frame.ref && this.outbox.get(frame.ref);
    if (!entry) return;
    if (frame.code === "unavailable") {
      // Stored or not, the server could not finish: the same id is safe to send again.
      setTimeout(() => this.outbox.has(frame.ref) && this._send(entry.frame), this._delay(this.options.backoffBaseMs, 3));
    } else if (frame.code === "rate_limited" && frame.retry_after_ms) {
      // Sent too fast and not acted on: the same frame, once the server's budget has refilled.
      setTimeout(() => this.outbox.has(frame.ref) && this._send(entry.frame), frame.retry_after_ms * (1 + Math.random()));
    } else {
      this.outbox.delete(frame.ref);
      entry.reject(Object.assign(new Error(frame.message), { code: frame.code }));
    }
  }

  // --- connection life -------------------------------------------------------------------------

  // One socket, its URL made now: the positions (?resume=) are those of this moment.
  _open(token) {
    const resume = {};
    for (const [stream, position] of Object.entries(this.positions)) {
      if (this.wanted.has(stream) || stream === "broadcast" || stream.startsWith("user:")) {
        resume[stream] = position;
      }
    }
    const query = new URLSearchParams();
    if (Object.keys(resume).length) query.set("resume", JSON.stringify(resume));
    if (this.options.ephemeral) query.set("ephemeral", "1");
    const logged = String(query) ? `?${query}` : ""; // the URL less the token: logs keep no secret
    if (token) query.set("token", token);
    const search = String(query) ? `?${query}` : "";
    this._lastError = null;
    let socket;
    if (this.transport === "sse") {
      const url = this._httpUrl(this.options.ssePath);
      this.debug("connecting over SSE", url + logged);
      socket = new EventStreamSocket(url + search, this._httpUrl(this.options.sseSendPath), token);
    } else {
      const url = this._webSocketUrl();
      this.debug("connecting", url + logged);
      const Socket = this.options.WebSocket || WebSocket;
      socket = new Socket(url + search);
    }
    this.socket = socket;
    socket.onmessage = (event) => this._onFrame(event.data);
    socket.onclose = (event) => this._onClose(socket, event.code, event.reason);
    socket.onerror = () => this.debug("socket error (a close follows)");
    return this;
  }

  _onClose(socket, code, reason) {
    if (socket !== this.socket) return;
    this.socket = null;
    this._stopTimers();
    if (this.final) return;
    if (code === CLOSE_UNAUTHORIZED) {
      this.final = true;
      const error = this._lastError; // the server says why first (bad_token, session_ended, ...)
      this._setState("unauthorized", {
        code, reason, ...(error ? { error: error.code, message: error.message } : {}),
      });
      return;
    }
    const canFallBack = typeof EventSource !== "undefined";
    if (this.state === "connecting" && this.transport === "websocket" && this.options.transport === "auto" && canFallBack) {
      // Closed before it ever said hello: blocked on the way, maybe. Enough of those in a row,
      // and the next connection (and every one after) is an event stream.
      this._failedOpens += 1;
      if (this._failedOpens >= this.options.sseAfterFailures) {
        this.debug(`${this._failedOpens} WebSockets failed to open: falling back to SSE`);
        this.transport = "sse";
      }
    }
    const base = TRY_LATER_CODES.has(code) ? this.options.tryLaterBaseMs : this.options.backoffBaseMs;
    this._retry(this._delay(base, this.attempt++), code);
  }

  // A draining replica gives each of its sockets a slot (after_ms), spread so that they do not
  // all arrive elsewhere at once: leave then, and reconnect at once (HAProxy sends the new
  // connection to a replica that is not draining), resuming from our positions.
  _onReconnectAsked(frame) {
    const socket = this.socket;
    this._clear("move");
    this._timers.move = setTimeout(() => {
      delete this._timers.move;
      if (socket !== this.socket || this.final) return;
      this.stats.moves += 1;
      this.debug("moving to another replica, as the server asked");
      this.socket = null;
      this._stopTimers();
      socket.onclose = null;
      socket.onmessage = null;
      try { socket.close(4000, "moving: the server is draining"); } catch { /* already closing */ }
      this.attempt = 0;
      this._retry(0, 1012, { moving: true });
    }, Math.max(0, Number(frame.after_ms) || 0));
  }

  // Leave a dead socket without waiting for its close handshake.
  _drop(why) {
    this.debug("dropping the socket:", why);
    const socket = this.socket;
    this.socket = null;
    this._stopTimers();
    if (socket) {
      socket.onclose = null;
      socket.onmessage = null;
      try { socket.close(4000, "client gave up on this socket"); } catch { /* already closing */ }
    }
    if (!this.final) this._retry(this._delay(this.options.backoffBaseMs, this.attempt++), 0);
  }

  _retry(delayMs, code, extra = {}) {
    this.debug(`reconnecting in ${Math.round(delayMs)} ms (close code ${code})`);
    this._setState("waiting", { delayMs, code, attempt: this.attempt, ...extra });
    this._timers.retry = setTimeout(() => { delete this._timers.retry; this.connect(); }, delayMs);
  }

  _delay(base, attempt) {
    return Math.random() * Math.min(this.options.backoffCapMs, base * 2 ** attempt);
  }

  _startHeartbeat() {
    this._lastFrameAt = Date.now();
    this._timers.heartbeat = setInterval(() => {
      if (Date.now() - this._lastFrameAt < this.options.heartbeatMs || this._timers.deadPeer) return;
      this._send({ type: "ping" });
      this._timers.deadPeer = setTimeout(() => this._drop("no answer to a ping"), this.options.deadPeerMs);
    }, Math.max(250, this.options.heartbeatMs / 4));
  }

  _stopTimers() {
    for (const name of ["heartbeat", "deadPeer", "uptime", "ack"]) this._clear(name);
    this.pendingAcks.clear();
  }

  _clear(name) {
    const timer = this._timers[name];
    if (timer !== undefined) {
      clearTimeout(timer);
      clearInterval(timer);
      delete this._timers[name];
    }
  }

  _flushAcks() {
    this._clear("ack");
    for (const [stream, seq] of this.pendingAcks) this._send({ type: "ack", stream, seq });
    this.pendingAcks.clear();
  }

  // --- helpers ---------------------------------------------------------------------------------

  // The site's base: the `url` option (a path in it is kept as a prefix), else the page's.
  _base() {
    if (!this.options.url) return null;
    const base = new URL(this.options.url);
    return { protocol: base.protocol, host: base.host, prefix: base.pathname.replace(/\/+$/, "") };
  }

  _webSocketUrl() {
    const base = this._base();
    if (!base) {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      return `${scheme}://${location.host}${this.options.path}`;
    }
    const scheme = base.protocol === "https:" || base.protocol === "wss:" ? "wss" : "ws";
    return `${scheme}://${base.host}${base.prefix}${this.options.path}`;
  }

  // An HTTP URL of the site's (the SSE transport's): relative to the page when there is no `url`.
  _httpUrl(path) {
    const base = this._base();
    if (!base) return path;
    const scheme = base.protocol === "https:" || base.protocol === "wss:" ? "https" : "http";
    return `${scheme}://${base.host}${base.prefix}${path}`;
  }

  _send(frame) {
    const socket = this.socket;
    if (!socket || socket.readyState !== OPEN || this.state !== "open") return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  _setPosition(stream, epoch, seq) {
    this.positions[stream] = { epoch: epoch ?? null, seq };
    // Saved on every frame: a reload a moment later must not replay what this tab showed.
    this._save();
  }

  _load() {
    if (!this.storage) return {};
    try {
      return JSON.parse(this.storage.getItem(this.options.storageKey) || "{}") || {};
    } catch {
      return {};
    }
  }

  _save() {
    if (!this.storage) return;
    try {
      this.storage.setItem(this.options.storageKey, JSON.stringify(this.positions));
    } catch {
      /* storage full or disabled: resume still works within this page's life */
    }
  }

  _setState(state, detail) {
    this.state = state;
    this._emit("state", { state, ...detail });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

// The SSE transport behind a WebSocket's interface (readyState, send, close, onmessage, onclose),
// so the client above does not care which it has. Frames arrive as the events of GET /sse/;
// a close is an "close" event carrying the code a WebSocket would have closed with. Each frame
// sent is a POST to /sse/send naming this stream's connection (from hello): any replica takes
// it and the channel layer carries it to the one holding the stream. The browser's own
// EventSource reconnect is switched off: the client reconnects with its positions in the URL.
export class EventStreamSocket {
  constructor(url, sendUrl, token = "") {
    this.readyState = 0;
    this.sendUrl = sendUrl;
    // The POSTs' credentials: the connection token the stream opened with, or the page's session
    // (its cookie, and the CSRF header Django wants with it).
    this.authorization = token ? { Authorization: `Bearer ${token}` } : null;
    this.connection = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this._queue = Promise.resolve();
    const source = new EventSource(url, { withCredentials: true });
    this.source = source;
    source.onopen = () => { this.readyState = OPEN; };
    source.onmessage = (event) => {
      if (this.readyState !== OPEN) this.readyState = OPEN;
      if (this.connection === null && event.data.includes('"hello"')) {
        try { this.connection = JSON.parse(event.data).connection || null; } catch { /* not hello */ }
      }
      this.onmessage?.({ data: event.data });
    };
    source.addEventListener("close", (event) => {
      let code = 1000;
      let reason = "";
      try { ({ code, reason } = JSON.parse(event.data)); } catch { /* a bare close */ }
      this._closed(code, reason);
    });
    source.onerror = () => {
      this.onerror?.();
      this._closed(1006, "the event stream broke");
    };
  }

  // Frames go out in order, one POST after another.
  send(text) {
    if (this.readyState !== OPEN || !this.connection) return;
    const body = JSON.stringify({ connection: this.connection, frame: text });
    this._queue = this._queue.then(() => fetch(this.sendUrl, {
      method: "POST",
      credentials: this.authorization ? "omit" : "same-origin",
      headers: {
        "Content-Type": "application/json",
        ...(this.authorization || { "X-CSRFToken": csrfToken() }),
      },
      body,
    }).then((answer) => {
      if (!answer.ok && answer.status !== 202) this._closed(1006, `POST answered ${answer.status}`);
    }, () => this._closed(1006, "a POST failed")));
  }

  close(code = 1000, reason = "") {
    this._closed(code, reason);
  }

  _closed(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.source.close();
    this.onclose?.({ code, reason });
  }
}

function csrfToken() {
  if (typeof document === "undefined") return "";
  const match = document.cookie.match(/(?:^|; )csrftoken=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}
