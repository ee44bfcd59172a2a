"""One client's garbage gets it a clear error, and never breaks delivery for anyone else."""

from __future__ import annotations

import asyncio
import json

from devtools.cluster import Cluster
from tests.cluster.helpers import api_post, sessions_for, socket_for
from tests.support.clients import WsClient, origin_of


async def test_garbage_frames_get_errors_and_the_bystander_keeps_receiving(
    cluster: Cluster,
) -> None:
    users = sessions_for(cluster, 2, "garbage")
    rogue = await socket_for(cluster, users["garbage0"], replica="d2")
    bystander = await socket_for(cluster, users["garbage1"], replica="d2")

    async def push_to_bystander(n: int) -> None:
        body = {"user": "garbage1", "payload": {"n": n}}
        assert (await asyncio.to_thread(api_post, cluster, "/api/push", body)).status_code == 200
        await bystander.wait_for(
            lambda frames: any(f.get("payload") == {"n": n} for f in frames), what=f"push {n}"
        )

    await rogue.connection.send("this is not json {")
    await rogue.connection.send(b"\x00\x01\x02 binary")
    await rogue.send_json({"type": "launch_missiles"})
    await rogue.send_json([1, 2, 3])
    await rogue.send_json({"payload": "no type"})
    await rogue.send_json({"type": "echo", "payload": "x" * 70_000})  # above the 64 KiB limit
    await rogue.send_json({"type": "echo", "id": 42})
    await push_to_bystander(1)
    errors = await rogue.wait_type("error", count=7)
    assert [e["code"] for e in errors] == [
        "bad_json",
        "binary_not_supported",
        "unknown_type",
        "bad_frame",
        "missing_type",
        "frame_too_large",
        "bad_id",
    ]
    assert all(e["message"] for e in errors)

    # The connection still works after the errors.
    await rogue.send_json({"type": "echo", "id": "e1", "payload": "still here"})
    echo = (await rogue.wait_type("echo"))[0]
    assert echo == {"type": "echo", "replica": "d2", "payload": "still here", "id": "e1"}

    # 2 MiB: above Daphne's 1 MiB frame limit, the socket is closed with 1009 (too big).
    await rogue.connection.send(json.dumps({"type": "echo", "payload": "y" * (2 * 1024 * 1024)}))
    assert await rogue.wait_closed() == 1009
    await push_to_bystander(2)
    assert bystander.closed_code is None
    assert bystander.of_type("error") == []
    await bystander.close()


async def test_socket_without_a_session_is_closed_with_4401(cluster: Cluster) -> None:
    ws = await WsClient.open(cluster.ws_url)
    assert await ws.wait_closed() == 4401
    assert ws.frames[0]["code"] == "unauthorized"


async def test_socket_from_a_foreign_origin_is_refused(cluster: Cluster) -> None:
    users = sessions_for(cluster, 1, "origin")
    try:
        await WsClient.open(
            cluster.ws_url, cookie=f"sessionid={users['origin0']}", origin="http://evil.example"
        )
    except Exception as exc:  # the handshake is rejected with HTTP 403
        assert "403" in str(exc)
    else:
        raise AssertionError("a foreign origin opened a socket")
    assert origin_of(cluster.url).startswith("http://127.0.0.1")
