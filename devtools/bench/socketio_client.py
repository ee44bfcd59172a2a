"""The pool's client for the Socket.IO peer: Engine.IO v4 / Socket.IO v5 over the same lean
WebSocket (wire.py), counting events exactly as BenchClient counts our frames.

What it speaks, one Engine.IO packet per WebSocket message:
  client `40{"user":…,"token":…}`       connect, right after the upgrade
  server `0{"sid":…,"pingInterval":…}`   open
  server `40{"sid":…}`                   connected   (`44{…}`: refused)
  server `2`                             ping        -> client `3` (pong)
  server `42["hello",{replica,replicas,streams}]`    ready: tracks for every replica's streams
  server `42["m",{stream,seq,sent_at,payload}]`       a message, counted
The peer numbers per publishing replica (`broadcast@d2`, `user:<name>@d2`), so a client tracks
one stream per replica and kind, each in order on its own. There is no resume: a client that
reconnects (W4) counts what it missed while away as lost.
"""

from __future__ import annotations

import asyncio
import json

from devtools.bench.clients import CONNECT_TIMEOUT_SECS, BenchClient, StreamTrack

# The Socket.IO endpoint, WebSocket from the first request (no long-polling upgrade).
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"


class SocketIOError(Exception):
    """The server refused the Socket.IO connect (`44…`): a bad token."""


class SocketIOClient(BenchClient):
    """`cookies["sessionid"]` holds the connect token (the HMAC the peer checks)."""

    async def connect(self, *, resume: bool = False) -> None:
        """Open the socket and wait for the hello event. `resume` is ignored: Socket.IO does
        not resume, so a reconnect starts receiving from now."""
        self.ready.clear()
        self.awaiting_resume = set()
        cookie = f"SERVERID={self.cookies['SERVERID']}" if "SERVERID" in self.cookies else ""
        await self._open_socket(self.pool.ws_url, cookie)
        protocol = self.protocol
        assert protocol is not None
        # Sent now rather than on the open packet: that may come in the 101's own read, before
        # ws_connect has returned the protocol to send on. Engine.IO opens the session with the
        # upgrade and reads packets after its open packet, so the order holds.
        auth = {"user": self.username, "token": self.cookies["sessionid"]}
        protocol.send_text("40" + json.dumps(auth))
        await asyncio.wait_for(self.ready.wait(), CONNECT_TIMEOUT_SECS)

    def on_messages(self, texts: list[bytes], now_ms: float) -> None:
        pool = self.pool
        for text in texts:
            if text.startswith(b"42"):
                event, data = json.loads(text[2:])
                if event == "m":
                    # Our counting path (BenchClient.on_messages), inline for the same cost.
                    track = self.tracks.get(data["stream"])
                    if track is None:
                        track = self.tracks[data["stream"]] = StreamTrack(None, data["seq"] - 1)
                    track.receive(data["seq"])
                    self.last_rx = now_ms
                    pool.latencies.append(now_ms - data["sent_at"])
                    pool.delivered += 1
                elif event == "hello":
                    self._hello(data, now_ms)
            elif text == b"2":
                if self.protocol is not None:
                    self.protocol.send_text("3")
            elif text.startswith(b"44"):
                pool.errors.append({"type": "connect_error", "detail": text[2:].decode()})
                if self.protocol is not None:
                    self.protocol.abort()
            # `0{…}` (open) and `40{"sid"}` (connected) need nothing: connect() sent its `40`
            # already, and the hello event that follows says ready.

    def _hello(self, hello: dict[str, object], now_ms: float) -> None:
        self.replica = str(hello["replica"])
        # Every replica publishes streams of its own, and this client is in all of them: track
        # each from the start, so a first message lost is counted. The hello's replica knows its
        # own positions; the others' streams are at 0 for a client that connected before the
        # first publish (the bench connects every client first). On a reconnect the tracks stay.
        streams = hello.get("streams") or {}
        assert isinstance(streams, dict)
        for replica in hello.get("replicas") or []:  # type: ignore[attr-defined]
            for stream in (f"broadcast@{replica}", f"user:{self.username}@{replica}"):
                if stream not in self.tracks:
                    self.tracks[stream] = StreamTrack(None, int(streams.get(stream, 0)))
        if not self.ready.is_set():
            self.ready_at = now_ms
            self.ready.set()
