"""HAProxy's health checks answered past Django's middleware (realtime/probe_lane.py), on a real
Redis: a probe from this host is answered by its view, with the headers Django would add;
anything else reaches Django as before."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator

from realtime.layer import StreamChannelLayer
from realtime.probe_lane import ProbeLane
from tests.integration.conftest import Fallback

pytestmark = pytest.mark.django_db(transaction=True)


async def probe(
    app: Any,
    path: str,
    *,
    client: str = "127.0.0.1",
    method: str = "GET",
    host: str = "localhost",
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", host.encode()), *extra],
        "client": (client, 40000),
        "server": ("127.0.0.1", 8001),
    }
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(5)
    body = await communicator.receive_output(5)
    await communicator.wait(5)
    return start["status"], dict(start["headers"]), body["body"]


async def test_a_probe_from_this_host_is_answered_by_its_view_without_django(
    layer: StreamChannelLayer,
) -> None:
    django = Fallback()
    app = ProbeLane(django)
    status, headers, body = await probe(app, "/readyz")
    ready = json.loads(body)
    assert (status, ready["ready"], ready["reasons"]) == (200, True, [])
    assert headers[b"x-replica"] == ready["replica"].encode()
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"content-security-policy"].startswith(b"default-src 'self'")
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body)
    status, _, body = await probe(app, "/healthz")
    health = json.loads(body)
    # From this host: the details a health check from outside does not get.
    assert (status, health["status"], health["redis"]["reachable"]) == (200, "ok", True)
    assert django.paths == [], "neither probe went through Django"


@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("/healthz", {"client": "10.1.2.3"}),  # from elsewhere: staff see details, by session
        ("/readyz", {"client": "10.1.2.3"}),
        # Through a proxy on this host: the client is whoever it forwarded.
        ("/healthz", {"extra": ((b"x-forwarded-for", b"203.0.113.9"),)}),
        ("/readyz", {"method": "POST"}),
        ("/readyz", {"host": "evil.example"}),  # Django's own 400
        ("/whoami", {}),
    ],
)
async def test_anything_else_reaches_django(
    layer: StreamChannelLayer, path: str, options: dict[str, Any]
) -> None:
    django = Fallback()
    status, _, body = await probe(ProbeLane(django), path, **options)
    assert (status, body, django.paths) == (299, b"django", [path])
