"""The benchmark's client pool: N logged-in sockets through HAProxy that count what they get.

Each client keeps, per stream, the last seq it received and the seqs it skipped over, so lost,
duplicated and out-of-order messages are counted exactly and cheaply:
  seq == last + 1  in order;          seq > last + 1  the seqs between are missing (for now);
  seq in missing   arrived late: out of order;   any other seq <= last: a duplicate.
A client honours its SERVERID cookie (sent back on every reconnect, as a browser would) and, when
the pool reconnects, resumes each stream from its last seq (`/ws/?resume=…`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from array import array
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from devtools.bench.wire import HandshakeError, WsProtocol, set_cookies, ws_connect

logger = logging.getLogger(__name__)

# Reconnect backoff with full jitter (a random delay up to base * 2^attempt, capped): what the
# bundled clients do, so a storm of reconnects is spread the way real clients spread it.
BACKOFF_BASE_SECS = 0.2
BACKOFF_CAP_SECS = 3.0
CONNECT_TIMEOUT_SECS = 15.0


@dataclass
class StreamTrack:
    epoch: str | None
    last: int
    missing: set[int] = field(default_factory=set)
    dups: int = 0
    reorders: int = 0

    def receive(self, seq: int) -> None:
        last = self.last
        if seq == last + 1:
            self.last = seq
        elif seq > last:
            self.missing.update(range(last + 1, seq))
            self.last = seq
        elif seq in self.missing:
            self.missing.discard(seq)
            self.reorders += 1
        else:
            self.dups += 1

    def lost_in(self, low: int, high: int) -> int:
        """Seqs in low..high this client never received (so far)."""
        gone = sum(1 for seq in self.missing if low <= seq <= high)
        return gone + max(0, high - max(self.last, low - 1))


class BenchClient:
    def __init__(self, pool: ClientPool, username: str, session_key: str) -> None:
        self.pool = pool
        self.username = username
        self.cookies = {"sessionid": session_key}
        self.tracks: dict[str, StreamTrack] = {}
        self.protocol: WsProtocol | None = None
        self.user_id: int | None = None
        self.replica: str | None = None
        self.ready = asyncio.Event()  # hello (and every resumed frame) received
        self.awaiting_resume: set[str] = set()
        self.ready_at = 0.0  # epoch ms
        self.last_rx = 0.0  # epoch ms of the last stream frame received
        self.closing = False
        self.reconnects = 0

    @property
    def user_stream(self) -> str:
        return f"user:{self.user_id}"

    # --- connecting ----------------------------------------------------------------------------

    async def connect(self, *, resume: bool = False) -> None:
        """Open the socket and wait for hello (and, resuming, every stream's `resumed`)."""
        self.ready.clear()
        url = self.pool.ws_url
        if resume and self.tracks:
            positions = {s: {"epoch": t.epoch, "seq": t.last} for s, t in self.tracks.items()}
            url += "?resume=" + quote(json.dumps(positions, separators=(",", ":")))
            self.awaiting_resume = set(positions) if self.pool.resumable else set()
        else:
            self.awaiting_resume = set()
        cookie = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        await self._open_socket(url, cookie)
        await asyncio.wait_for(self.ready.wait(), CONNECT_TIMEOUT_SECS)

    async def _open_socket(self, url: str, cookie: str) -> None:
        """The handshake; the replica's SERVERID kept, so the next connect goes back to it."""
        protocol, headers = await ws_connect(
            url,
            cookie=cookie,
            origin=self.pool.origin,
            on_messages=self.on_messages,
            timeout=CONNECT_TIMEOUT_SECS,
        )
        self.protocol = protocol
        self.cookies.update({k: v for k, v in set_cookies(headers).items() if k == "SERVERID"})
        protocol.closed.add_done_callback(lambda _: self._on_closed(protocol))

    def _on_closed(self, protocol: WsProtocol) -> None:
        if self.closing or protocol is not self.protocol:
            return
        self.ready.clear()
        self.pool.on_dropped(self)

    async def reconnect_forever(self) -> None:
        """Reconnect with full-jitter backoff until it works (the pool's storm handler)."""
        attempt = 0
        while not self.closing:
            await asyncio.sleep(
                random.uniform(0, min(BACKOFF_CAP_SECS, BACKOFF_BASE_SECS * 2**attempt))
            )
            try:
                await self.connect(resume=True)
            except (OSError, HandshakeError, TimeoutError) as exc:
                if self.protocol is not None:
                    self.protocol.abort()
                logger.debug("%s: reconnect failed: %r", self.username, exc)
                attempt += 1
                continue
            self.reconnects += 1
            return

    async def close(self) -> None:
        self.closing = True
        if self.protocol is not None:
            await self.protocol.close()

    # --- receiving -----------------------------------------------------------------------------

    def on_messages(self, texts: list[bytes], now_ms: float) -> None:
        pool = self.pool
        for text in texts:
            frame = json.loads(text)
            seq = frame.get("seq")
            if seq is not None and "sent_at" in frame:
                stream = frame["stream"]
                track = self.tracks.get(stream)
                if track is None:
                    track = self.tracks[stream] = StreamTrack(frame.get("epoch"), seq - 1)
                track.receive(seq)
                # A stream's first message gives it its epoch, which a resume must name.
                track.epoch = frame.get("epoch")
                self.last_rx = now_ms
                pool.latencies.append(now_ms - frame["sent_at"])
                pool.delivered += 1
            else:
                self._control(frame, now_ms)

    def _control(self, frame: dict[str, Any], now_ms: float) -> None:
        kind = frame.get("type")
        if kind == "hello":
            self.user_id = frame.get("user_id")
            self.replica = frame.get("replica")
            for stream, position in (frame.get("streams") or {}).items():
                if stream not in self.tracks:
                    self.tracks[stream] = StreamTrack(
                        position.get("epoch"), position.get("seq") or 0
                    )
        elif kind == "resumed":
            self.awaiting_resume.discard(frame.get("stream"))
            if not frame.get("recovered"):
                self.pool.unrecovered += 1
        elif kind == "error":
            self.pool.errors.append(frame)
            return
        else:
            return
        if not self.awaiting_resume and not self.ready.is_set():
            self.ready_at = now_ms
            self.ready.set()


class ClientPool:
    """N clients of one target, plus the counters a workload reads and resets."""

    def __init__(
        self,
        *,
        ws_url: str,
        origin: str,
        sessions: dict[str, str],
        resumable: bool = True,
        client_class: type[BenchClient] | None = None,
    ) -> None:
        self.ws_url = ws_url
        self.origin = origin
        self.resumable = resumable  # the target answers ?resume= with `resumed` frames
        # Chosen once per target, so our protocol's per-frame path has no branch for a peer's.
        make = client_class or BenchClient
        self.clients = [make(self, name, key) for name, key in sessions.items()]
        self.latencies: array[float] = array("f")
        self.delivered = 0
        self.unrecovered = 0
        self.errors: list[dict[str, Any]] = []
        self.reconnect_on_drop = False
        self.dropped: list[BenchClient] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def reset_counters(self) -> None:
        self.latencies = array("f")
        self.delivered = 0
        self.unrecovered = 0
        self.errors = []
        for client in self.clients:
            for track in client.tracks.values():
                track.dups = track.reorders = 0

    async def connect_all(self, *, concurrency: int, progress: Any = None) -> list[str]:
        """Connect every client (a few attempts each); return the errors of those that failed."""
        gate = asyncio.Semaphore(concurrency)
        failures: list[str] = []

        async def one(client: BenchClient) -> None:
            async with gate:
                for attempt in range(5):
                    try:
                        await client.connect()
                        break
                    except (OSError, HandshakeError, TimeoutError) as exc:
                        if client.protocol is not None:
                            client.protocol.abort()
                        if attempt == 4:
                            failures.append(f"{client.username}: {exc!r}")
                        await asyncio.sleep(random.uniform(0, BACKOFF_BASE_SECS * 2**attempt))
                if progress is not None:
                    progress()

        await asyncio.gather(*(one(client) for client in self.clients))
        return failures

    def on_dropped(self, client: BenchClient) -> None:
        self.dropped.append(client)
        if self.reconnect_on_drop:
            task = asyncio.get_running_loop().create_task(client.reconnect_forever())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def connected(self) -> list[BenchClient]:
        return [c for c in self.clients if c.ready.is_set()]

    def by_replica(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for client in self.connected():
            counts[client.replica or "?"] = counts.get(client.replica or "?", 0) + 1
        return counts

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(client.close() for client in self.clients), return_exceptions=True)


class NoHello(Exception):
    """The socket opened but closed (or stayed silent) without a hello: refused after the
    upgrade, as a user over MAX_SOCKETS_PER_USER is (4429)."""


async def open_briefly(
    url: str, *, origin: str, session_key: str, lifetime: float, abort: bool
) -> str | None:
    """One short-lived socket (W5): open, wait for hello, ping, stay `lifetime` seconds, then
    go, with a close handshake or (`abort`) by resetting the TCP connection as a crashed client
    or a lost network does. Returns the replica hello named. It counts nothing it receives:
    the pool's clients measure delivery, this one only makes the server build and free a socket.
    """
    hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def on_messages(texts: list[bytes], now_ms: float) -> None:
        if hello.done():
            return  # broadcasts and pushes: the pool's clients count those
        for text in texts:
            frame = json.loads(text)
            if frame.get("type") == "hello":
                hello.set_result(frame)
                return

    protocol, _ = await ws_connect(
        url,
        cookie=f"sessionid={session_key}",
        origin=origin,
        on_messages=on_messages,
        timeout=CONNECT_TIMEOUT_SECS,
    )

    def closed_first(closed: asyncio.Future[int]) -> None:
        if not hello.done():
            hello.set_exception(NoHello(f"closed before hello (code {closed.result()})"))

    protocol.closed.add_done_callback(closed_first)
    try:
        replica = (await asyncio.wait_for(hello, CONNECT_TIMEOUT_SECS)).get("replica")
        protocol.send_text('{"type":"ping"}')
        await asyncio.sleep(lifetime)
    except BaseException:
        protocol.abort()
        raise
    if abort:
        protocol.abort()
    else:
        await protocol.close()
    return str(replica) if replica is not None else None


async def wait_until(condition: Any, *, timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition` until true; False after `timeout` seconds (the caller reports it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True
