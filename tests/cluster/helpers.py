"""Shortcuts the cluster tests share: API calls through HAProxy and logged-in sockets."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from devtools.cluster import Cluster
from tests.conftest import manage
from tests.support.clients import WsClient, origin_of

_tokens: dict[str, str] = {}


def api_token(cluster: Cluster) -> str:
    """An API token issued by `manage.py apitoken create`, once per cluster."""
    if cluster.url not in _tokens:
        name = f"tests-{len(_tokens)}"
        _tokens[cluster.url] = manage(cluster, "apitoken", "create", name).stdout.strip()
    return _tokens[cluster.url]


def api_post(
    cluster: Cluster, path: str, body: Any, *, replica: str | None = None, token: str | None = None
) -> httpx.Response:
    """POST through HAProxy with the API token, pinned to `replica` by its cookie if given."""
    headers = {"Authorization": f"Bearer {token or api_token(cluster)}"}
    if replica:
        headers["Cookie"] = f"SERVERID={replica}"
    content = body if isinstance(body, bytes) else json.dumps(body)
    return httpx.post(f"{cluster.url}{path}", content=content, headers=headers, timeout=15)


def sessions_for(cluster: Cluster, count: int, prefix: str) -> dict[str, str]:
    """`count` users with a logged-in session each: {username: session key}."""
    out = manage(cluster, "bench_users", "--count", str(count), "--prefix", prefix).stdout
    return json.loads(out)  # type: ignore[no-any-return]


async def socket_for(
    cluster: Cluster, session_key: str, *, replica: str | None = None, timeout: float = 10
) -> WsClient:
    """A user's socket through HAProxy, pinned to `replica` (the SERVERID cookie) if given."""
    cookie = f"sessionid={session_key}"
    if replica:
        cookie += f"; SERVERID={replica}"
    ws = await WsClient.open(cluster.ws_url, cookie=cookie, origin=origin_of(cluster.url))
    await ws.wait_type("hello", timeout=timeout)
    return ws


async def probe_until_published(
    cluster: Cluster, token: str, stream: str = "user:999999999", *, bound_secs: float = 30
) -> tuple[float, list[str]]:
    """POST a publish to `stream` (by default one no client of the harness reads: nobody is
    sent an extra frame) every 50 ms until one is answered 200: (seconds it took, the error
    codes of the refusals on the way). Fails after `bound_secs`."""
    started = time.monotonic()
    refusals: list[str] = []
    async with httpx.AsyncClient(base_url=cluster.url, timeout=5) as http:
        while time.monotonic() - started < bound_secs:
            try:
                answer = await http.post(
                    "/api/publish",
                    json={"stream": stream, "payload": {"probe": True}},
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx.TransportError as exc:
                refusals.append(type(exc).__name__)
            else:
                if answer.status_code == 200:
                    return time.monotonic() - started, refusals
                refusals.append(f"{answer.status_code} {answer.json().get('error')}")
            await asyncio.sleep(0.05)  # the probe's pace: what it measures is when one succeeds
    raise AssertionError(
        f"no publish to {stream} succeeded within {bound_secs:g} s: {refusals[-5:]}"
    )
