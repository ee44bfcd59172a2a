"""Real HTTP and WebSocket clients for the cluster tier: log in, keep cookies, collect frames.

A `WsClient` reads every frame into `frames` in the background, so tests wait for conditions
("alice has 10 pushes") with a timeout instead of sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Frame = dict[str, Any]


def login(base_url: str, username: str, password: str) -> httpx.Client:
    """A client holding alice's session (and the SERVERID cookie of the replica that served it)."""
    client = httpx.Client(base_url=base_url, timeout=10)
    page = client.get("/accounts/login/")
    page.raise_for_status()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, "the login page has no CSRF token"
    answer = client.post(
        "/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)},
    )
    assert answer.status_code == 302, f"login of {username} failed: {answer.status_code}"
    assert "sessionid" in client.cookies, f"login of {username} set no session cookie"
    return client


def cookie_header(cookies: httpx.Cookies, *, sticky: bool = True) -> str:
    names = {"sessionid", "csrftoken"} | ({"SERVERID"} if sticky else set())
    return "; ".join(f"{c.name}={c.value}" for c in cookies.jar if c.name in names)


def origin_of(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


class FrameCollector:
    """What both transports' test clients share: every received frame kept in order, and
    waits on them with a timeout (no sleeping)."""

    frames: list[Frame]
    _changed: asyncio.Event

    async def wait_for(
        self, predicate: Callable[[list[Frame]], bool], *, timeout: float = 10, what: str = ""
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.frames):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or 'frames'}; "
                    f"have {len(self.frames)}: {self.frames[-5:]}"
                )
            self._changed.clear()
            if predicate(self.frames):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_type(
        self, frame_type: str, *, count: int = 1, timeout: float = 10
    ) -> list[Frame]:
        await self.wait_for(
            lambda frames: len(self.of_type(frame_type)) >= count,
            timeout=timeout,
            what=f"{count} {frame_type!r} frame(s)",
        )
        return self.of_type(frame_type)

    def of_type(self, frame_type: str) -> list[Frame]:
        return [f for f in self.frames if f.get("type") == frame_type]

    @property
    def hello(self) -> Frame:
        hellos = self.of_type("hello")
        assert hellos, f"no hello frame; frames: {self.frames}"
        return hellos[0]


class WsClient(FrameCollector):
    """One WebSocket connection through HAProxy, with every received frame kept in order."""

    # Every client not yet closed, so a fixture can close what a failed test left open.
    open_clients: ClassVar[set[WsClient]] = set()

    def __init__(self, connection: ClientConnection, *, reading: bool = True) -> None:
        self.open_clients.add(self)
        self.connection = connection
        self.frames: list[Frame] = []
        self.raw: list[str | bytes] = []
        self.closed_code: int | None = None
        self._changed = asyncio.Event()
        # Cleared: the client stops taking frames, as a stuck browser tab does; once websockets'
        # own queue is full it stops reading the socket, and the server's buffers fill.
        self.reading = asyncio.Event()
        if reading:
            self.reading.set()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        ws_url: str,
        *,
        cookie: str = "",
        origin: str | None = None,
        reading: bool = True,
        **kwargs: Any,
    ) -> WsClient:
        headers = {"Cookie": cookie} if cookie else {}
        if origin is None:
            origin = origin_of(ws_url.replace("ws://", "http://").replace("wss://", "https://"))
        connection = await connect(
            ws_url,
            additional_headers=headers,
            origin=origin,  # type: ignore[arg-type]
            open_timeout=10,
            max_size=None,
            **kwargs,
        )
        return cls(connection, reading=reading)

    async def _read(self) -> None:
        try:
            while True:
                await self.reading.wait()
                message = await self.connection.recv()
                self.raw.append(message)
                if isinstance(message, str):
                    self.frames.append(json.loads(message))
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed_code = self.connection.close_code
            self.open_clients.discard(self)
            self._changed.set()

    async def wait_closed(self, *, timeout: float = 10) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.closed_code

    async def send_json(self, frame: Frame) -> None:
        await self.connection.send(json.dumps(frame))

    async def close(self) -> None:
        self.reading.set()  # a paused reader would never see the close
        await self.connection.close()
        await asyncio.wait_for(asyncio.shield(self._reader), 10)


async def close_all_clients() -> None:
    await asyncio.gather(*(client.close() for client in list(WsClient.open_clients)))


async def open_user_socket(
    ws_url: str, client: httpx.Client, *, sticky: bool = True, timeout: float = 10
) -> WsClient:
    """Open a socket with `client`'s cookies and wait for the server's hello."""
    ws = await WsClient.open(ws_url, cookie=cookie_header(client.cookies, sticky=sticky))
    await ws.wait_type("hello", timeout=timeout)
    return ws


class SseClient(FrameCollector):
    """The SSE transport from the outside: GET /sse/ read in the background into `frames`, and
    frames sent with POST /sse/send (which may land on any replica)."""

    def __init__(self, base_url: str, cookie: str, query: str = "") -> None:
        self.base_url = base_url
        self.cookie = cookie
        self.query = query
        self.frames: list[Frame] = []
        self.closed_code: int | None = None
        self.stream_replica: str | None = None
        self._changed = asyncio.Event()
        self._client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=60))
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> SseClient:
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(
            lambda frames: bool(frames) or self.closed_code is not None, what="hello"
        )
        return self

    async def _read(self) -> None:
        event = "message"
        try:
            async with self._client.stream(
                "GET", f"/sse/{self.query}", headers={"Cookie": self.cookie}
            ) as response:
                self.stream_replica = response.headers.get("x-replica")
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        if event == "close":
                            self.closed_code = data["code"]
                        else:
                            self.frames.append(data)
                        event = "message"
                        self._changed.set()
        except httpx.HTTPError:
            pass
        finally:
            if self.closed_code is None:
                self.closed_code = 1006
            self._changed.set()

    async def send(self, frame: Frame, *, replica: str | None = None) -> httpx.Response:
        """POST one frame; `replica` pins the POST to a replica (by its SERVERID cookie)."""
        token = "s" * 32  # any well-formed CSRF secret, the same in the cookie and the header
        cookie = f"{self.cookie}; csrftoken={token}"
        if replica:
            cookie = ";".join(p for p in cookie.split(";") if "SERVERID" not in p)
            cookie += f"; SERVERID={replica}"
        connection = self.hello["connection"]
        body = {"connection": connection, "frame": json.dumps(frame)}
        return await self._client.post(
            "/sse/send", json=body, headers={"Cookie": cookie, "X-CSRFToken": token}
        )

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._client.aclose()


def tampered(token: str) -> str:
    """The token with its claims changed (another user) and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = str(int(claims["sub"]) + 1)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"
