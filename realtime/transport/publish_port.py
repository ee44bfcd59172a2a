"""The publish port: a lean HTTP/1.1 listener in each replica for the token publish API only.

A single `POST /api/push` through Daphne cost a replica ~1.7 ms of CPU, most of it Twisted
parsing the request and Daphne turning it into an ASGI application instance; the publish lane
(realtime/publish_lane.py) and the publish itself are ~0.3 ms of that (docs/performance.md).
With `PUBLISH_PORT_BIND=host:port` a replica also listens there, on the same event loop, with
this small asyncio protocol: it reads a request (Content-Length bodies only, at most
api.MAX_BODY_BYTES), runs the very handler the endpoint's Django view runs (the publish lane's
routes) on a PortRequest (its headers and body: all a token request's handler reads), and
writes the answer as the publish lane does, with the headers Django's middleware would add;
connections are kept alive. HAProxy sends `POST /api/push`, `/api/push/batch`,
`/api/broadcast` and `/api/publish` with an `Authorization` header there (haproxy.cfg, backend
`publishers`, the same servers, cookie and health as `replicas`); everything else, and every
deployment without the port, goes through Daphne as before, with the same answers.

Only what the lane serves is served: any other request gets a 404 (or 405, 411, 413, 431,
501) in the API's JSON error shape, and the connection is closed after an error that leaves
the stream unreadable. A connection idle for IDLE_SECS, or one that sends a request's head
slower than HEAD_SECS, is closed.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:  # the lane itself is imported when serving (its views need Django set up)
    from realtime.publish_lane import Answer

logger = logging.getLogger(__name__)


MAX_HEAD_BYTES = 16 * 1024
HEAD_SECS = 10.0
IDLE_SECS = 75.0  # above HAProxy's `timeout http-keep-alive`, so HAProxy closes first
# How long a refused body is read and dropped before the connection closes anyway.
LINGER_SECS = 2.0


class PublishPortProtocol(asyncio.Protocol):
    """One client connection (HAProxy's, reused across requests): requests in order, one at a
    time; reading pauses while one is being answered."""

    def __init__(self, max_body: int, lane: ModuleType) -> None:
        self.lane = lane
        self.max_body = max_body
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0  # loop time: closed once idle (or mid-head) past it (_arm)
        self.dropping = 0  # bytes of a refused body still to read and drop before closing

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._arm(IDLE_SECS)

    def data_received(self, data: bytes) -> None:
        if self.dropping:
            self._drop(len(data))
            return
        self.buffer += data
        if not self.busy:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()

    # --- requests ----------------------------------------------------------------------------

    def _arm(self, secs: float) -> None:
        """Close the connection `secs` from now unless something moves the deadline first.
        One timer per connection, moved only to an earlier deadline: cancelling and arming one
        per request (the idle timeout after each answer) left a cancelled handle in the event
        loop's heap each time: ~2.5% of a push's samples (docs/performance.md, eighth round)."""
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + secs
        if self.timer is None or self.timer.when() > self.deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = loop.call_at(self.deadline, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        if self.transport is None or self.closed:
            return
        loop = asyncio.get_running_loop()
        if self.busy:  # answering: the deadline is set again after the answer
            self.timer = loop.call_later(IDLE_SECS, self._timed_out)
        elif loop.time() < self.deadline:  # moved on since this timer was armed
            self.timer = loop.call_at(self.deadline, self._timed_out)
        else:
            self.transport.close()

    def _next(self) -> None:
        """Start on the next complete request in the buffer, if there is one."""
        if self.closed:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._fail(431, "head_too_large", "Request headers are too large.")
            elif self.buffer:
                self._arm(HEAD_SECS)  # a request has begun: its head must come soon
            return
        if end > MAX_HEAD_BYTES:
            self._fail(431, "head_too_large", "Request headers are too large.")
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._fail(400, "bad_request", "Not an HTTP/1.1 request.")
            return
        method, target, version = parts
        headers: dict[str, str] = {}
        length = 0
        keep_alive = version == "HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                self._fail(400, "bad_request", "A malformed header line.")
                return
            name, value = name.lower(), value.strip()
            if name == "content-length":
                if not value.isdigit() or length:
                    self._fail(400, "bad_request", "A malformed Content-Length.")
                    return
                length = int(value)
            elif name == "transfer-encoding":
                self._fail(501, "chunked", "Send a Content-Length body here.")
                return
            elif name == "connection":
                keep_alive = value.lower() != "close" and (
                    version == "HTTP/1.1" or value.lower() == "keep-alive"
                )
            headers[name] = value
        if length > self.max_body:
            message = f"Request bodies may be at most {self.max_body} bytes."
            answer = self.lane.refusal(413, "body_too_large", message)
            self._refuse_body(answer, unread=end + 4 + length - len(self.buffer))
            return
        if len(self.buffer) < end + 4 + length:
            self._arm(HEAD_SECS)  # the body is on its way
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        path = unquote(target.partition("?")[0])
        self.busy = True  # (the timer stays: it finds the connection busy if it fires)
        asyncio.get_running_loop().create_task(
            self._answer(method, path, headers, body, keep_alive)
        )

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes, keep_alive: bool
    ) -> None:
        try:
            status, answer_headers, content = await respond(self.lane, method, path, headers, body)
        except Exception:
            logger.exception("publish port: the request failed path=%s", path)
            status, answer_headers, content = self.lane.refusal(
                500, "server_error", "The request failed; see the log."
            )
        self._write(status, answer_headers, content, keep_alive)
        self.busy = False
        if keep_alive and not self.closed:
            self._arm(IDLE_SECS)
            if self.buffer:
                self._next()

    def _write(
        self, status: int, headers: list[tuple[bytes, bytes]], content: bytes, keep_alive: bool
    ) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(_head(status, headers, content, keep_alive) + content)
        if not keep_alive:
            self.transport.close()

    def _fail(self, status: int, code: str, message: str) -> None:
        """An answer to a request that cannot be read on from: then the connection closes."""
        answer: Answer = self.lane.refusal(status, code, message)
        self._write(*answer, keep_alive=False)
        self.closed = True

    def _refuse_body(self, answer: Answer, *, unread: int) -> None:
        """Answer a request whose body is refused at once, then read and drop that body before
        closing, for at most LINGER_SECS: a connection closed with bytes unread is reset by the
        kernel, and the reset can destroy the answer before the peer reads it (HAProxy then
        told the client nothing at all)."""
        if self.transport is None:
            return
        self.closed = True  # no request after this one
        self.buffer.clear()
        status, headers, content = answer
        self.transport.write(_head(status, headers, content, keep_alive=False) + content)
        self.dropping = max(unread, 0)
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(LINGER_SECS, self.transport.close)
        self._drop(0)

    def _drop(self, count: int) -> None:
        self.dropping = max(self.dropping - count, 0)
        if not self.dropping and self.transport is not None:
            self.transport.close()


def _head(
    status: int, headers: list[tuple[bytes, bytes]], content: bytes, keep_alive: bool
) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    has_length = False
    for name, value in headers:
        has_length = has_length or name.lower() == b"content-length"
        lines.append(name + b": " + value)
    if not has_length:
        lines.append(b"content-length: " + str(len(content)).encode())
    if not keep_alive:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class PortRequest:
    """A token request as the publish handlers read it (realtime/api.py ApiRequest): its
    headers, looked up by any case, and its body. Not an HttpRequest: building one (its
    QueryDicts, META) and the JsonResponse after it were a sixth of a push's CPU on this port.
    tests/integration/test_publish_port.py runs every publish endpoint through it."""

    __slots__ = ("body", "headers")

    def __init__(self, headers: dict[str, str], body: bytes) -> None:
        self.headers = _Headers(headers)
        self.body = body

    async def auser(self) -> Any:
        # Never asked: the port serves requests with an Authorization header only, and a
        # token caller is never a session's user.
        from django.contrib.auth.models import AnonymousUser

        return AnonymousUser()


class _Headers(dict[str, str]):
    """Header names lower-cased on the way in; looked up by any case."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


NOT_HERE = (
    "This port serves POST /api/push, /api/push/batch, /api/broadcast and /api/publish with "
    "'Authorization: Bearer <token>' only."
)


async def respond(
    lane: ModuleType, method: str, path: str, headers: dict[str, str], body: bytes
) -> Answer:
    """The publish endpoint's answer to a token request (status, headers, body), as the
    publish lane (`lane`, realtime/publish_lane.py) gives it; 404 for anything else."""
    handler = lane.ROUTES.get(path)
    if handler is None or method != "POST" or "authorization" not in headers:
        return lane.refusal(404, "not_found", NOT_HERE)  # type: ignore[no-any-return]
    return await lane.answer(handler, PortRequest(headers, body))  # type: ignore[no-any-return]


async def serve(bind: str, max_body: int) -> asyncio.Server:
    """Listen on `bind` ("host:port") with the lane; the server, already serving."""
    from realtime import publish_lane  # its views need Django set up: imported when serving

    host, _, port = bind.rpartition(":")
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: PublishPortProtocol(max_body, publish_lane), host.strip("[]") or None, int(port)
    )
