"""History encrypted at rest (HISTORY_ENCRYPTION_KEYS): Redis' log and pub/sub carry no
payload, clients get the same frames as without a key (live, replayed, from the API), and a
rotated key keeps the older messages readable."""

from __future__ import annotations

import base64
import json
import os
from urllib.parse import quote

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from pytest_django.fixtures import Settings

from realtime import broker, publish, sealing
from realtime.layer import StreamChannelLayer
from realtime.services import api_token_issue
from tests.integration.conftest import a_user, open_socket

pytestmark = pytest.mark.django_db(transaction=True)


def key(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


async def stored(stream: str) -> list[str]:
    """The stream's log as Redis holds it."""
    entries = await broker.current().redis(stream).xrange(broker.current().keys.stream_log(stream))
    return [fields[b"f"].decode() for _, fields in entries]


async def test_redis_holds_no_payload_and_clients_see_no_difference(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    settings.HISTORY_ENCRYPTION_KEYS = [key("k1")]
    live, _ = await open_socket(a_user(51))
    sent = [await publish.push_to_user(user_id=51, payload={"text": f"secret {n}"}) for n in (1, 2)]
    frames = await live.receive_many(2)
    assert [f["payload"]["text"] for f in frames] == ["secret 1", "secret 2"]
    assert [(f["seq"], f["epoch"], f["type"]) for f in frames] == [
        (1, sent[0].epoch, "push"),
        (2, sent[0].epoch, "push"),
    ]
    log = await stored("user:51")
    assert len(log) == 2 and all("secret" not in f and '"sealed":"k1.' in f for f in log)
    # A replay from history opens them too.
    position = {"user:51": {"epoch": sent[0].epoch, "seq": 0}}
    again, _ = await open_socket(a_user(51), "?resume=" + quote(json.dumps(position)))
    replayed = [f for f in await again.receive_many(3) if f["type"] == "push"]
    assert [f["payload"]["text"] for f in replayed] == ["secret 1", "secret 2"]
    # And the server API's history.
    _, secret = await sync_to_async(api_token_issue)(name="sealed-history")
    answer = await AsyncClient().get(
        "/api/history?stream=user:51", headers={"Authorization": f"Bearer {secret}"}
    )
    assert [m["payload"]["text"] for m in answer.json()["messages"]] == ["secret 1", "secret 2"]
    for socket in (live, again):
        await socket.close()


async def test_a_rotated_key_still_opens_what_the_old_one_sealed(
    layer: StreamChannelLayer, settings: Settings
) -> None:
    old = key("k1")
    settings.HISTORY_ENCRYPTION_KEYS = [old]
    first = await publish.push_to_user(user_id=52, payload="before")
    settings.HISTORY_ENCRYPTION_KEYS = [key("k2"), old]  # k2 seals from now on
    await publish.push_to_user(user_id=52, payload="after")
    log = await stored("user:52")
    assert '"sealed":"k1.' in log[0] and '"sealed":"k2.' in log[1]
    position = {"user:52": {"epoch": first.epoch, "seq": 0}}
    socket, _ = await open_socket(a_user(52), "?resume=" + quote(json.dumps(position)))
    pushes = [f for f in await socket.receive_many(3) if f["type"] == "push"]
    assert [f["payload"] for f in pushes] == ["before", "after"]
    await socket.close()


def test_a_tampered_or_unknown_key_frame_is_never_guessed(settings: Settings) -> None:
    settings.HISTORY_ENCRYPTION_KEYS = [key("k1")]
    body = sealing.seal_body('{"type":"push","payload":"x"}')
    frame = '{"seq":1,"epoch":"e",' + body[1:]
    assert json.loads(sealing.open_frame(frame))["payload"] == "x"
    tampered = frame[:-3] + ("A" if frame[-3] != "A" else "B") + frame[-2:]
    assert sealing.open_frame(tampered) == tampered  # sent as it is, logged; no payload
    settings.HISTORY_ENCRYPTION_KEYS = [key("k9")]
    assert sealing.open_frame(frame) == frame
