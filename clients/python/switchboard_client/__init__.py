"""A Python client for Switchboard with the browser client's behaviour (realtime/static/realtime/
client.js).

It serves the tests, the benchmark and any Python program that wants a reliable stream:
  * reconnects with exponential backoff and full jitter; the retry count resets only after the
    connection stayed up for `min_uptime_secs`, so a server that accepts and then drops at once
    cannot pull its clients into a tight loop;
  * close-code classes (realtime/protocol.py's CLOSE_CODES): 4401 (not logged in) stops for
    good; 4429, 4503 and 1013 ("try again later") back off from the longer
    `try_later_base_secs`; everything else backs off from `backoff_base_secs`;
  * dead-peer detection through WebSocket pings (a silent peer is dropped after
    `dead_peer_secs`, then the client reconnects);
  * resumes every stream it has seen from its last (epoch, seq) through `/ws/?resume=…`, so
    replay starts before any live message, on whichever replica HAProxy picks;
  * drops duplicates by (stream, epoch, seq) and reports `recovered: false` resets;
  * keeps an outbox of `publish` frames with client-made ids and resends the unacknowledged ones
    after a reconnect (the server publishes a repeated id once and acknowledges it again);
  * acknowledges what it received, batched, so publishers can see delivered/read state;
  * speaks the same protocol over Server-Sent Events (`transport="sse"`: GET /sse/ for the
    server's frames, POST /sse/send for its own) where WebSockets cannot pass.

Usage:
    client = RealtimeClient(ws_url, cookie="sessionid=…", streams=["room:lobby"])
    await client.start()                 # returns once the first hello arrived
    ack = await client.publish("room:lobby", {"text": "hi"})
    await client.wait_for(lambda c: len(c.received["room:lobby"]) >= 3, timeout=10)
    await client.close()                 # final: no reconnect after this
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

logger = logging.getLogger(__name__)

Frame = dict[str, Any]

CLOSE_UNAUTHORIZED = 4401
# "Try again later": Switchboard's 4503 and 4429 (too many sockets), and the standard 1013.
CLOSE_TRY_LATER = frozenset({4503, 4429, 1013})
# The server frames this client acts on (protocol.SERVER_FRAMES, a unit test keeps them equal):
# the stream envelopes, and the frames that change its state. The rest (echo, pong,
# unsubscribed, presence, typing, lab) it ignores.
STREAM_FRAME_TYPES = frozenset({"push", "message", "broadcast", "ops"})
STATE_FRAME_TYPES = frozenset({"hello", "subscribed", "resumed", "ack", "error", "reconnect"})


@dataclass(frozen=True)
class ClientOptions:
    backoff_base_secs: float = 0.25
    # 10 s: long enough that a thousand clients of a dead replica spread their returns, short
    # enough that a person does not think the page broke.
    backoff_cap_secs: float = 10.0
    # The base after a "try again later" close (CLOSE_TRY_LATER): the server is short of
    # something (Redis, or this user's socket slots), so its clients should not return at once.
    try_later_base_secs: float = 2.0
    # The retry count resets only after a connection lived this long (see the module docstring).
    min_uptime_secs: float = 5.0
    ping_secs: float = 15.0
    # Well under the 60 s at which NATs and proxies drop idle connections, above ping_secs.
    dead_peer_secs: float = 20.0
    open_timeout_secs: float = 10.0
    ack_every_secs: float = 0.25
    # Unacknowledged publishes kept for resending; past this, publish() refuses.
    outbox_max: int = 1000


@dataclass
class Position:
    epoch: str | None
    seq: int

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seq": self.seq}


@dataclass
class ClientStats:
    duplicates_dropped: int = 0
    gaps_seen: int = 0  # a seq skipped on the wire: the server should never let one through
    resets: int = 0  # resumed with recovered: false
    resent: int = 0  # outbox frames sent again after a reconnect
    moves: int = 0  # reconnects the server asked for ({"type": "reconnect"}: a replica draining)
    replicas: list[str] = field(default_factory=list)  # the replica of every connection, in order

    @property
    def connects(self) -> int:
        return len(self.replicas)


# The server writes a comment on an idle event stream this often (realtime/transport/sse.py).
EVENT_STREAM_HEARTBEAT_SECS = 5.0


class EventStreamConnection:
    """The SSE transport's connection, as the client uses a WebSocket's: send() POSTs a frame
    to /sse/send naming the stream's connection (any replica takes it); close() ends the GET."""

    def __init__(
        self, http: httpx.AsyncClient, response: httpx.Response, headers: dict[str, str]
    ) -> None:
        self.http = http
        self.response = response
        self.headers = headers  # the POSTs' credentials: session and CSRF, or the token
        self.id: str | None = None

    async def send(self, text: str) -> None:
        if self.id is None:
            return  # before hello: the client sends (again) once it is open
        body = {"connection": self.id, "frame": text}
        await self.http.post("/sse/send", json=body, headers=self.headers)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.response.aclose()


class ClientClosed(Exception):
    """The client was closed, or the server refused it for good (4401)."""


class PublishRefused(Exception):
    """The server refused a publish (not allowed, bad payload): resending would not help."""

    def __init__(self, frame: Frame) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.frame = frame


class RealtimeClient:
    def __init__(
        self,
        ws_url: str,
        *,
        cookie: str = "",
        origin: str | None = None,
        streams: list[str] | tuple[str, ...] = (),
        options: ClientOptions | None = None,
        on_message: Callable[[Frame], None] | None = None,
        rng: random.Random | None = None,
        transport: str = "websocket",
        token: str | Callable[[], Awaitable[str]] = "",
    ) -> None:
        if transport not in ("websocket", "sse"):
            raise ValueError(f"transport is 'websocket' or 'sse', not {transport!r}")
        # A connection token (POST /api/connect-token) instead of a session cookie: a string, or
        # an async function asked for a fresh one before every connect (tokens expire).
        self.token = token
        self.transport = transport
        self.ws_url = ws_url.split("?")[0]
        self.cookie = cookie
        parts = urlsplit(ws_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1))
        self.origin = origin or f"{parts.scheme}://{parts.netloc}"
        self.options = options or ClientOptions()
        self.on_message = on_message
        self.rng = rng or random.Random()
        self.wanted: list[str] = list(streams)
        self.positions: dict[str, Position] = {}
        self.received: dict[str, list[Frame]] = defaultdict(list)
        self.events: list[Frame] = []  # hello, resumed, error, subscribed frames, in order
        self.stats = ClientStats()
        self.replica: str | None = None
        self.user_id: int | None = None
        self.closed_code: int | None = None
        self.refused: str | None = None  # why the server refused us for good
        self._outbox: dict[str, tuple[Frame, asyncio.Future[Frame]]] = {}
        self._acked_upto: dict[str, Position] = {}
        self._connection: ClientConnection | EventStreamConnection | None = None
        self._http: httpx.AsyncClient | None = None  # the SSE transport's
        self._changed = asyncio.Event()
        self._connected = asyncio.Event()
        self._closing = False
        # Set when the server asked us to move (a draining replica): the next connect is at
        # once, in the slot the server gave, not after a backoff.
        self._moving = False
        self._mover: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._acker: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, *, timeout: float = 15) -> RealtimeClient:
        """Start connecting (and reconnecting) in the background; wait for the first hello."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
            self._acker = asyncio.create_task(self._ack_forever())
        await self.wait_connected(timeout=timeout)
        return self

    async def wait_connected(self, *, timeout: float = 15) -> None:
        waiter = asyncio.create_task(self._connected.wait())
        # The runner too: it ends when the server refuses us for good.
        waiting: set[asyncio.Future[Any]] = {waiter}
        if self._runner is not None:
            waiting.add(self._runner)
        await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self.refused:
            raise ClientClosed(self.refused)
        if not self._connected.is_set():
            raise TimeoutError(f"not connected within {timeout}s")

    async def close(self) -> None:
        """Final: the client does not reconnect after this; unacknowledged publishes fail."""
        self._closing = True
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        for task in (self._runner, self._acker, self._mover):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._http is not None:
            await self._http.aclose()
        for _, future in self._outbox.values():
            if not future.done():
                future.set_exception(ClientClosed("closed before the server acknowledged"))
                future.exception()
        self._outbox.clear()

    async def drop(self) -> None:
        """Close the current connection as a network failure would; the client reconnects."""
        if self._connection is not None:
            await self._connection.close(code=4000, reason="client dropped the connection")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- sending -------------------------------------------------------------------------------

    async def publish(
        self, stream: str, payload: Any, *, id: str | None = None, timeout: float = 30
    ) -> Frame:
        """Publish to a stream and wait for the server's ack (resent after reconnects)."""
        if self._closing:
            raise ClientClosed("closed")
        if len(self._outbox) >= self.options.outbox_max:
            raise RuntimeError(f"{len(self._outbox)} publishes await an ack; slow down")
        message_id = id or uuid.uuid4().hex
        frame = {"type": "publish", "id": message_id, "stream": stream, "payload": payload}
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._outbox[message_id] = (frame, future)
        if self.connected:
            await self._send(frame)
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    async def subscribe(self, stream: str) -> None:
        if stream not in self.wanted:
            self.wanted.append(stream)
        if self.connected and stream not in self.positions:
            await self._send({"type": "subscribe", "stream": stream})

    async def send_raw(self, frame: Frame) -> None:
        await self._send(frame)

    async def _send(self, frame: Frame) -> None:
        connection = self._connection
        if connection is None:
            return  # sent (again) after the next connect
        with contextlib.suppress(ConnectionClosed, httpx.HTTPError):
            await connection.send(json.dumps(frame))

    # --- waiting -------------------------------------------------------------------------------

    async def wait_for(
        self, predicate: Callable[[RealtimeClient], bool], *, timeout: float = 10, what: str = ""
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or 'condition'}"
                )
            self._changed.clear()
            if predicate(self):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def payloads(self, stream: str) -> list[Any]:
        return [frame.get("payload") for frame in self.received.get(stream, [])]

    # --- the connection loop -------------------------------------------------------------------

    def _url(self, token: str = "") -> str:
        query = [f"token={quote(token)}"] if token else []
        if self.positions:
            positions = {stream: pos.as_dict() for stream, pos in self.positions.items()}
            query.append(f"resume={quote(json.dumps(positions, separators=(',', ':')))}")
        return f"{self.ws_url}?{'&'.join(query)}" if query else self.ws_url

    async def _fresh_token(self) -> str:
        if callable(self.token):
            return await self.token()
        return self.token

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            opened_at = None
            if self.transport == "sse":
                opened_at = await self._run_event_stream()
            else:
                opened_at = await self._run_websocket()
            if self.closed_code == CLOSE_UNAUTHORIZED:
                self.refused = "not logged in (4401)"
            if self.refused or self._closing:
                return
            if self._moving:
                # The server's slot has come: reconnect now (HAProxy sends us to a replica that
                # is not draining), resuming from our positions.
                self._moving = False
                attempt = 0
                continue
            if (
                opened_at is not None
                and time.monotonic() - opened_at >= self.options.min_uptime_secs
            ):
                attempt = 0
            base = (
                self.options.try_later_base_secs
                if self.closed_code in CLOSE_TRY_LATER
                else self.options.backoff_base_secs
            )
            delay = self.rng.uniform(0, min(self.options.backoff_cap_secs, base * 2**attempt))
            attempt += 1
            logger.debug(
                "client: reconnecting in %.2fs (attempt %d, close %s)",
                delay,
                attempt,
                self.closed_code,
            )
            await asyncio.sleep(delay)

    async def _run_event_stream(self) -> float | None:
        """One SSE connection, until it ends; when it opened (None: it did not). One HTTP client
        serves every stream and POST of this RealtimeClient, closed by close()."""
        if self._http is None:
            timeout = httpx.Timeout(
                self.options.open_timeout_secs,
                read=EVENT_STREAM_HEARTBEAT_SECS + self.options.dead_peer_secs,
            )
            self._http = httpx.AsyncClient(base_url=self.origin, timeout=timeout)
        http = self._http
        connect_token = await self._fresh_token()
        csrf = uuid.uuid4().hex  # a CSRF secret of ours, in the cookie and in the header
        cookie = f"{self.cookie}; csrftoken={csrf}" if self.cookie else f"csrftoken={csrf}"
        # With a connection token, the stream opens with it in the URL and each POST carries it
        # as a bearer credential (no cookie, so no CSRF); with a session, cookie and CSRF header.
        post_headers = (
            {"Authorization": f"Bearer {connect_token}"}
            if connect_token
            else {"Cookie": cookie, "X-CSRFToken": csrf}
        )
        query = self._url(connect_token)[len(self.ws_url) :]
        opened_at = None
        self.closed_code = None
        try:
            async with http.stream("GET", f"/sse/{query}", headers={"Cookie": cookie}) as response:
                if response.status_code == 403:
                    self.refused = "the server refused the event stream (403: origin)"
                    return None
                opened_at = time.monotonic()
                connection = EventStreamConnection(http, response, post_headers)
                self._connection = connection
                event = "message"
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                        continue
                    if not line.startswith("data: "):
                        continue
                    data = json.loads(line[6:])
                    if event == "close":
                        self.closed_code = int(data.get("code") or 1000)
                        break
                    event = "message"
                    if data.get("type") == "hello":
                        connection.id = data.get("connection")
                    await self._on_frame(data)
        except httpx.HTTPError as exc:
            logger.debug("client: event stream failed: %r", exc)
        finally:
            self._connection = None
            self._connected.clear()
            self._changed.set()
        return opened_at

    async def _run_websocket(self) -> float | None:
        """One WebSocket connection, until it closes; when it opened (None: it did not)."""
        opened_at = None
        try:
            async with connect(
                self._url(await self._fresh_token()),
                additional_headers={"Cookie": self.cookie} if self.cookie else {},
                origin=self.origin,  # type: ignore[arg-type]
                open_timeout=self.options.open_timeout_secs,
                ping_interval=self.options.ping_secs,
                ping_timeout=self.options.dead_peer_secs,
                max_size=None,
            ) as connection:
                opened_at = time.monotonic()
                self._connection = connection
                async for message in connection:
                    if isinstance(message, str):
                        await self._on_frame(json.loads(message))
            self.closed_code = connection.close_code
        except ConnectionClosed as exc:
            self.closed_code = exc.rcvd.code if exc.rcvd else None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            if isinstance(exc, InvalidStatus) and exc.response.status_code == 403:
                self.refused = "the server refused the handshake (403: origin or host)"
            logger.debug("client: connect failed: %r", exc)
            self.closed_code = None
        finally:
            self._connection = None
            self._connected.clear()
            self._changed.set()
        return opened_at

    async def _on_frame(self, frame: Frame) -> None:
        kind = frame.get("type")
        if kind in STREAM_FRAME_TYPES and "seq" in frame and "stream" in frame:
            self._on_envelope(frame)
        elif kind == "hello":
            await self._on_hello(frame)
        elif kind in ("resumed", "subscribed"):
            self.events.append(frame)
            stream = frame["stream"]
            if kind == "subscribed" or frame.get("recovered") is False:
                if kind == "resumed":
                    self.stats.resets += 1
                self.positions[stream] = Position(frame.get("epoch"), int(frame.get("seq") or 0))
        elif kind == "ack":
            entry = self._outbox.pop(frame.get("id", ""), None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(frame)
        elif kind == "error":
            self.events.append(frame)
            self._on_error(frame)
        elif kind == "reconnect":
            self.events.append(frame)
            self._move_after(float(frame.get("after_ms") or 0) / 1000)
        self._changed.set()

    def _move_after(self, delay: float) -> None:
        """The server is draining this replica: leave at `delay` (the slot it gave, spread so
        its sockets do not all land elsewhere at once) and reconnect at once."""
        connection = self._connection

        async def move() -> None:
            await asyncio.sleep(max(0.0, delay))
            if connection is not None and connection is self._connection:
                self._moving = True
                self.stats.moves += 1
                await connection.close(code=4000, reason="moving: the replica is draining")

        if self._mover is None or self._mover.done():
            self._mover = asyncio.get_running_loop().create_task(move())

    async def _on_hello(self, frame: Frame) -> None:
        self.events.append(frame)
        self.replica, self.user_id = frame.get("replica"), frame.get("user_id")
        self.stats.replicas.append(str(self.replica))
        for stream, position in (frame.get("streams") or {}).items():
            # A stream seen for the first time starts at the head; a resumed one keeps ours.
            self.positions.setdefault(
                stream, Position(position.get("epoch"), int(position.get("seq") or 0))
            )
        self._connected.set()
        for stream in self.wanted:
            if stream not in self.positions:
                await self._send({"type": "subscribe", "stream": stream})
        if self._outbox:
            self.stats.resent += len(self._outbox)
            for outgoing, _ in list(self._outbox.values()):
                await self._send(outgoing)

    def _on_envelope(self, frame: Frame) -> None:
        stream, seq, epoch = frame["stream"], int(frame["seq"]), frame.get("epoch")
        position = self.positions.get(stream)
        if position is not None and position.epoch == epoch and seq <= position.seq:
            self.stats.duplicates_dropped += 1
            return
        if position is not None and position.epoch == epoch and seq > position.seq + 1:
            self.stats.gaps_seen += 1
        self.positions[stream] = Position(epoch, seq)
        self.received[stream].append(frame)
        if self.on_message is not None:
            self.on_message(frame)

    def _on_error(self, frame: Frame) -> None:
        revoked = frame.get("stream") if frame.get("code") == "access_revoked" else None
        if revoked:
            # Taken away by the server: asking for it again after a reconnect would be refused.
            if revoked in self.wanted:
                self.wanted.remove(revoked)
            self.positions.pop(revoked, None)
        entry = self._outbox.get(frame.get("ref") or "")
        if entry is None:
            return
        if frame.get("code") == "unavailable":
            return  # Redis is down: kept, and resent after the next reconnect
        if frame.get("code") == "rate_limited" and frame.get("retry_after_ms"):
            # Sent too fast, not acted on: the same frame again once the budget has refilled.
            ref, delay = frame["ref"], frame["retry_after_ms"] / 1000 * (1 + random.random())
            asyncio.get_running_loop().call_later(delay, self._resend, ref)
            return
        self._outbox.pop(frame["ref"])
        if not entry[1].done():
            entry[1].set_exception(PublishRefused(frame))
            entry[1].exception()

    def _resend(self, ref: str) -> None:
        entry = self._outbox.get(ref)
        if entry is not None and self.connected:
            task = asyncio.ensure_future(self._send(entry[0]))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _ack_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.ack_every_secs)
            if not self.connected:
                continue
            for stream, position in list(self.positions.items()):
                acked = self._acked_upto.get(stream)
                fresh = acked is None or acked.epoch != position.epoch or acked.seq < position.seq
                if position.epoch is not None and position.seq > 0 and fresh:
                    await self._send({"type": "ack", "stream": stream, "seq": position.seq})
                    self._acked_upto[stream] = Position(position.epoch, position.seq)
