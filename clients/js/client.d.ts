// Types for @switchboard/client: the client the Django app serves as /static/realtime/client.js,
// written by hand. The wire protocol they describe is realtime/protocol.py's table; the behaviour,
// the comments at the top of client.js.

/** Every tunable, frozen; a client's options are these with its own on top. */
export interface Tunables {
  /** The WebSocket's path on the site. */
  path: string;
  /**
   * "auto": a WebSocket, and Server-Sent Events once WebSockets failed `sseAfterFailures` times in
   * a row without ever opening (never with a `token`, nor where there is no EventSource);
   * "websocket" or "sse" to choose.
   */
  transport: "auto" | "websocket" | "sse";
  sseAfterFailures: number;
  ssePath: string;
  sseSendPath: string;
  /** Reconnect delay: random(0, min(backoffCapMs, base * 2^attempt)). */
  backoffBaseMs: number;
  backoffCapMs: number;
  /** The base after a "try again later" close (1013, 4503, 4429). */
  tryLaterBaseMs: number;
  /** The retry count resets only after a connection stayed up this long. */
  minUptimeMs: number;
  /** Ping after this long without any frame. */
  heartbeatMs: number;
  /** Drop the socket (and reconnect) when a ping got no answer in this long. */
  deadPeerMs: number;
  /** Unacknowledged publishes kept for resending; past this, publish() rejects at once. */
  outboxMax: number;
  /** Received seqs are acknowledged at most this often (the highest per stream). */
  ackBatchMs: number;
  /** The key positions are stored under in `storage`. */
  storageKey: string;
  /** Ask for ephemeral frames (typing, presence). */
  ephemeral: boolean;
  debug: boolean;
  logPrefix: string;
}

export declare const DEFAULTS: Readonly<Tunables>;

/** Where positions are kept: Web Storage's getItem/setItem (sessionStorage is one). */
export interface PositionStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** What the client needs of a WebSocket (the browser's, node's, the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event?: any) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** A connection token (POST /api/connect-token answers one), or a function asked for a fresh one. */
export type TokenSource = string | (() => string | Promise<string>);

export interface RealtimeClientOptions extends Partial<Tunables> {
  /**
   * The site's base URL ("https://example.com"; a path in it is kept as a prefix). The WebSocket's
   * URL is made from it (http -> ws, https -> wss) and `path`, the SSE transport's from it too.
   * Unset: the page's location (outside a page it must be set).
   */
  url?: string;
  /**
   * Sent as `?token=` on every connect instead of a session cookie. A function is asked before
   * each connect (tokens expire); a close 4401 is final all the same (state "unauthorized", its
   * `error` saying why: "bad_token" for an expired or tampered one). Over SSE it opens the stream
   * and goes with each POST of the client's frames as `Authorization: Bearer`.
   */
  token?: TokenSource;
  /** Used instead of globalThis.WebSocket (node 20 without --experimental-websocket: `ws`'s). */
  WebSocket?: WebSocketConstructor;
  /**
   * Where positions are kept. Default: sessionStorage where there is one, else a MemoryStorage of
   * this client's own. Give several clients one store and a later one resumes where an earlier one
   * stopped; null keeps none.
   */
  storage?: PositionStorage | null;
}

/** A stream's position: the server's epoch for it (null before the first message) and the seq. */
export interface Position {
  epoch: string | null;
  seq: number;
}

// --- frames (realtime/protocol.py's SERVER_FRAMES) ----------------------------------------------

export interface Frame {
  type: string;
  [field: string]: unknown;
}

/** A stream's message (push: a user stream; message: a room; broadcast; ops), seen once. */
export interface StreamFrame<Payload = unknown> {
  type: "push" | "message" | "broadcast" | "ops";
  stream: string;
  id: string;
  payload: Payload;
  /** Unix milliseconds, when the server took it. */
  sent_at: number;
  /** The replica that published it. */
  origin: string;
  seq: number;
  epoch: string | null;
  /** The sender's username, for a publish from a socket or a chat line. */
  sender?: string;
}

export interface HelloFrame {
  type: "hello";
  replica: string;
  user: string;
  user_id: number;
  connection: string;
  /** Where each stream the server placed this socket on starts. */
  streams: Record<string, Position>;
}

export interface SubscribedFrame {
  type: "subscribed";
  stream: string;
  epoch: string | null;
  seq: number;
}

export interface UnsubscribedFrame {
  type: "unsubscribed";
  stream: string;
  id?: string;
  /** "server": the server API took the stream away. */
  by?: string;
}

export interface ResumedFrame {
  type: "resumed";
  stream: string;
  /** false: messages were lost to this client (see `reason`): reload your state. */
  recovered: boolean;
  reason: "resume" | "gap" | "epoch" | "ahead" | (string & {});
  epoch: string | null;
  seq: number;
  replayed: number;
}

export interface AckFrame {
  type: "ack";
  id: string;
  stream: string;
  seq: number | null;
  epoch: string | null;
  /** The id was published before: this is that publish's seq. */
  duplicate: boolean;
  /** A chat line's row. */
  message_id?: number;
}

export type ErrorCode =
  | "bad_json" | "bad_frame" | "frame_too_large" | "binary_not_supported" | "bad_id"
  | "missing_type" | "unknown_type" | "missing_id" | "missing_payload" | "bad_stream"
  | "bad_position" | "bad_resume" | "bad_ack" | "bad_payload" | "not_subscribed"
  | "forbidden_stream" | "unknown_room" | "too_many_streams" | "seq_ahead" | "rate_limited"
  | "replay_limited" | "unavailable" | "internal_error" | "unauthorized" | "kicked" | "bad_token"
  | "session_ended" | "access_revoked" | "too_many_sockets";

export interface ErrorFrame {
  type: "error";
  code: ErrorCode | (string & {});
  message: string;
  /** The id of the frame refused. */
  ref?: string;
  /** The stream it is about. */
  stream?: string;
  /** rate_limited: when sending again may succeed. */
  retry_after_ms?: number;
}

/** A draining replica's slot: the client leaves after `after_ms` and reconnects at once. */
export interface ReconnectFrame {
  type: "reconnect";
  after_ms: number;
  reason: "draining" | (string & {});
  replica: string;
}

export interface PongFrame {
  type: "pong";
  replica: string;
  id?: string;
}

export interface EchoFrame<Payload = unknown> {
  type: "echo";
  replica: string;
  payload: Payload;
  id?: string;
}

export interface PresenceFrame {
  type: "presence";
  event: "join" | "leave";
  user: string;
  user_id: number;
  stream: string;
  origin: string;
}

export interface TypingFrame {
  type: "typing";
  user: string;
  user_id: number;
  stream: string;
  origin: string;
}

export interface LabFrame {
  type: "lab";
  way: string;
  replica: string;
  id: string;
  text: string;
}

/** The frames a client sends (realtime/protocol.py's CLIENT_FRAMES), for send(). */
export type ClientFrame =
  | { type: "echo"; payload?: unknown; id?: string }
  | { type: "ping"; id?: string }
  | { type: "subscribe"; stream: string; from?: Position; id?: string }
  | { type: "unsubscribe"; stream: string; id?: string }
  | { type: "resume"; streams: Record<string, Position>; id?: string }
  | { type: "publish"; id: string; stream: string; payload: unknown }
  | { type: "ack"; stream: string; seq: number; id?: string };

// --- events --------------------------------------------------------------------------------------

export type ClientState = "idle" | "connecting" | "open" | "waiting" | "unauthorized" | "closed";

export type StateDetail =
  | { state: "connecting"; attempt: number; transport: "websocket" | "sse" }
  | { state: "open"; replica: string }
  | {
      state: "waiting";
      delayMs: number;
      /** The close code that caused the wait; 0: a dead peer or a failed token function. */
      code: number;
      attempt: number;
      /** Why the token function failed, when it did. */
      error?: string;
    }
  | {
      state: "unauthorized";
      code: 4401;
      reason: string;
      /** The code of the error frame that came before the close ("bad_token", "session_ended", ...). */
      error?: ErrorCode | (string & {});
      message?: string;
    }
  | { state: "closed" };

export interface OpenDetail {
  replica: string;
  /** The replica of the connection before, after a reconnect; null for the first. */
  previousReplica: string | null;
  user: string;
  userId: number;
}

/** An event of the client's: `detail` holds the frame or the facts. */
export interface RealtimeEvent<Detail> extends Event {
  readonly detail: Detail;
}

export interface RealtimeClientEventMap {
  state: RealtimeEvent<StateDetail>;
  open: RealtimeEvent<OpenDetail>;
  /** A stream frame never seen before by this client, in order. */
  message: RealtimeEvent<StreamFrame>;
  /** A resumed frame with recovered: false: messages were lost, reload your state. */
  reset: RealtimeEvent<ResumedFrame>;
  subscribed: RealtimeEvent<SubscribedFrame>;
  unsubscribed: RealtimeEvent<UnsubscribedFrame>;
  resumed: RealtimeEvent<ResumedFrame>;
  ack: RealtimeEvent<AckFrame>;
  error: RealtimeEvent<ErrorFrame>;
  reconnect: RealtimeEvent<ReconnectFrame>;
  pong: RealtimeEvent<PongFrame>;
  echo: RealtimeEvent<EchoFrame>;
  presence: RealtimeEvent<PresenceFrame>;
  typing: RealtimeEvent<TypingFrame>;
  lab: RealtimeEvent<LabFrame>;
}

export interface ListenerOptions {
  capture?: boolean;
  once?: boolean;
  passive?: boolean;
  signal?: AbortSignal;
}

export interface ClientStats {
  /** Stream frames dropped as already seen. */
  duplicates: number;
  /** Connections after the first that said hello. */
  reconnects: number;
  /** Stream frames delivered as `message` events. */
  delivered: number;
  /** Reconnects the server asked for (`reconnect` frames from a draining replica). */
  moves: number;
}

interface OutboxEntry {
  frame: ClientFrame;
  resolve(ack: AckFrame): void;
  reject(error: Error): void;
}

export declare class RealtimeClient extends EventTarget {
  constructor(options?: RealtimeClientOptions);

  readonly options: Readonly<Tunables & RealtimeClientOptions>;
  /** Where positions are kept (null: nowhere but `positions`). */
  readonly storage: PositionStorage | null;
  /** {stream: position} of every stream this client has seen. */
  readonly positions: Record<string, Position>;
  /** Streams subscribed to beyond the user's own (which the server always adds). */
  readonly wanted: Set<string>;
  readonly outbox: Map<string, OutboxEntry>;
  readonly state: ClientState;
  /** True after close(), or after a 4401: no reconnect. */
  readonly final: boolean;
  /** The replica of the current (or last) connection. */
  readonly replica: string | null;
  readonly userId?: number;
  readonly transport: "websocket" | "sse";
  /** Retries since the last connection that stayed up `minUptimeMs`. */
  readonly attempt: number;
  readonly stats: ClientStats;

  /** Start connecting (and reconnecting); the `open` event says when it is up. */
  connect(): this;
  /** Read `stream` (room:<slug>), from `from` when given, else a stored position or its head. */
  subscribe(stream: string, from?: Position): void;
  unsubscribe(stream: string): void;
  /**
   * Publish with a client-made id, resent after reconnects until the server acknowledges it.
   * Rejects with an Error carrying `code` when the server refuses it, or when the client closes.
   */
  publish(stream: string, payload: unknown, options?: { id?: string }): Promise<AckFrame>;
  /** Fire and forget (typing): sent only if connected, never resent; true when it was sent. */
  publishVolatile(stream: string, payload: unknown): boolean;
  /** Any other protocol frame (echo, ping): sent only if connected; true when it was. */
  send(frame: ClientFrame): boolean;
  /** Final: no reconnect after this; unacknowledged publishes are rejected. */
  close(): void;
  debug(...args: unknown[]): void;

  addEventListener<K extends keyof RealtimeClientEventMap>(
    type: K,
    listener: (this: RealtimeClient, event: RealtimeClientEventMap[K]) => void,
    options?: boolean | ListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: ((event: RealtimeEvent<Frame>) => void) | { handleEvent(event: RealtimeEvent<Frame>): void } | null,
    options?: boolean | ListenerOptions,
  ): void;
  removeEventListener<K extends keyof RealtimeClientEventMap>(
    type: K,
    listener: (this: RealtimeClient, event: RealtimeClientEventMap[K]) => void,
    options?: boolean | Omit<ListenerOptions, "once" | "passive" | "signal">,
  ): void;
  removeEventListener(
    type: string,
    listener: ((event: RealtimeEvent<Frame>) => void) | { handleEvent(event: RealtimeEvent<Frame>): void } | null,
    options?: boolean | Omit<ListenerOptions, "once" | "passive" | "signal">,
  ): void;
}

/** Web Storage's getItem/setItem in memory; share one between clients to resume across them. */
export declare class MemoryStorage implements PositionStorage {
  constructor();
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/**
 * The SSE transport behind a WebSocket's interface (GET /sse/ for the server's frames, a POST to
 * /sse/send for each of the client's). The client makes it itself for transport "sse".
 */
export declare class EventStreamSocket implements WebSocketLike {
  constructor(url: string, sendUrl: string);
  readonly readyState: number;
  /** This stream's connection id, from hello: what each POST names. */
  readonly connection: string | null;
  send(text: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((event: { data: string }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: (() => void) | null;
}

/** A random 32-hex-digit id (a publish's id). */
export declare function newId(): string;
