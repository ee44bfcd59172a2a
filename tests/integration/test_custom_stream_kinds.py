"""A project's own stream kind (realtime/streams.py): `draft:<slug>`, readable and publishable
only by the room's creator, checked by an async ORM query. Every path to the stream (subscribe,
the resume frame, `?resume=` on connect, publish) is refused to anyone else with a clear error,
a witness socket on the same process hears after each refusal, and a permission taken away
cuts an open socket off (access.recheck)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User

from chat.models import Room
from realtime import access, publish, streams
from realtime.layer import StreamChannelLayer
from tests.integration.conftest import Socket, open_socket

pytestmark = pytest.mark.django_db(transaction=True)


async def owns_the_draft(user: Any, stream: str) -> bool:
    slug = stream.partition(":")[2]
    return await Room.objects.filter(slug=slug, created_by=user.pk).aexists()


def may_write_the_draft(user: Any, stream: str) -> bool:  # a sync check: it runs in a thread
    slug = stream.partition(":")[2]
    return Room.objects.filter(slug=slug, created_by=user.pk).exists()


@pytest.fixture(autouse=True)
def draft_kind() -> Iterator[None]:
    streams.register(
        "draft", key=r"[a-z0-9-]{1,50}", can_read=owns_the_draft, can_publish=may_write_the_draft
    )
    yield
    streams.forget("draft")


async def people() -> tuple[User, User, User]:
    owner = await User.objects.acreate(username="draft-owner")
    stranger = await User.objects.acreate(username="draft-stranger")
    witness = await User.objects.acreate(username="draft-witness")
    await Room.objects.acreate(slug="plan", title="Plan", created_by=owner)
    return owner, stranger, witness


async def error_after(socket: Socket, frame: dict[str, Any]) -> dict[str, Any]:
    await socket.send(frame)
    answer = await socket.receive()
    assert answer["type"] == "error", answer
    return answer


async def witness_hears(socket: Socket, user: User, n: int) -> None:
    await publish.push_to_user(user_id=user.pk, payload={"check": n})
    assert (await socket.receive())["payload"] == {"check": n}


async def test_only_the_owner_reads_and_publishes_and_every_path_is_checked(
    layer: StreamChannelLayer,
) -> None:
    owner, stranger, witness_user = await people()
    witness, _ = await open_socket(witness_user)
    mine, _ = await open_socket(owner)
    await mine.send({"type": "subscribe", "stream": "draft:plan"})
    assert (await mine.receive())["type"] == "subscribed"

    theirs, _ = await open_socket(stranger)
    refused = await error_after(theirs, {"type": "subscribe", "stream": "draft:plan"})
    assert refused["code"] == "forbidden_stream"
    await witness_hears(witness, witness_user, 1)
    refused = await error_after(
        theirs, {"type": "resume", "streams": {"draft:plan": {"epoch": "x", "seq": 0}}}
    )
    assert refused["code"] == "forbidden_stream"
    await witness_hears(witness, witness_user, 2)
    refused = await error_after(
        theirs, {"type": "publish", "id": "p1", "stream": "draft:plan", "payload": "hi"}
    )
    assert refused["code"] == "forbidden_stream"
    await witness_hears(witness, witness_user, 3)
    await theirs.close()

    resume = quote(json.dumps({"draft:plan": {"epoch": "x", "seq": 0}}))
    theirs, hello = await open_socket(stranger, f"?resume={resume}")
    assert "draft:plan" not in hello["streams"]
    assert (await theirs.receive())["code"] == "forbidden_stream"
    await witness_hears(witness, witness_user, 4)

    await mine.send({"type": "publish", "id": "p2", "stream": "draft:plan", "payload": "mine"})
    frames = {frame["type"]: frame for frame in [await mine.receive(), await mine.receive()]}
    assert sorted(frames) == ["ack", "message"]
    assert (frames["message"]["payload"], frames["message"]["seq"]) == (
        "mine",
        frames["ack"]["seq"],
    )
    assert await theirs.nothing(), "the stranger never hears the draft"
    for socket in (theirs, mine, witness):
        await socket.close()


async def test_a_permission_taken_away_cuts_the_open_socket_off(layer: StreamChannelLayer) -> None:
    owner, stranger, _ = await people()
    mine, _ = await open_socket(owner)
    await mine.send({"type": "subscribe", "stream": "draft:plan"})
    assert (await mine.receive())["type"] == "subscribed"
    await publish.publish(stream="draft:plan", payload="before")
    assert (await mine.receive())["payload"] == "before"

    await Room.objects.filter(slug="plan").aupdate(created_by=stranger)
    await access.recheck(streams=["draft:plan"])
    error = await mine.receive(timeout=5)
    assert (error["type"], error["code"], error["stream"]) == (
        "error",
        "access_revoked",
        "draft:plan",
    )
    await publish.publish(stream="draft:plan", payload="after")
    assert await mine.nothing(), "a revoked reader hears nothing more"
    await mine.close()
