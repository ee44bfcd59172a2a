"""A hostile logged-in user against the real cluster, through HAProxy: every attempt gets a clear
error or a limit, the attacker's socket gives back what it held, and a witness socket on the
same replica keeps receiving after every attempt."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import httpx
import redis

from devtools.cluster import Cluster, wait_until
from tests.cluster.helpers import api_post, sessions_for, socket_for
from tests.conftest import manage
from tests.support.clients import WsClient, cookie_header, login, origin_of

REPLICA = "d1"


class Witness:
    """A bystander's socket on the attacked replica: each check pushes to it and waits."""

    def __init__(self, cluster: Cluster, socket: WsClient, username: str) -> None:
        self.cluster, self.socket, self.username, self.checks = cluster, socket, username, 0

    @classmethod
    async def on(cls, cluster: Cluster, prefix: str) -> Witness:
        session = sessions_for(cluster, 1, f"{prefix}-witness")
        username, key = next(iter(session.items()))
        return cls(cluster, await socket_for(cluster, key, replica=REPLICA), username)

    async def still_hears(self) -> None:
        self.checks += 1
        body = {"user": self.username, "payload": {"check": self.checks}}
        answer = await asyncio.to_thread(api_post, self.cluster, "/api/push", body)
        assert answer.status_code == 200, answer.text
        await self.socket.wait_for(
            lambda frames: any(f.get("payload") == {"check": self.checks} for f in frames),
            what=f"the witness's push {self.checks}",
        )
        assert self.socket.closed_code is None


def health(cluster: Cluster, replica: str = REPLICA) -> dict[str, Any]:
    """The replica's /healthz asked from this host (not through HAProxy): all its counters."""
    return httpx.get(f"{cluster.replica_url(replica)}/healthz", timeout=10).json()  # type: ignore[no-any-return]


def wait_health(cluster: Cluster, predicate: Any, what: str, timeout: float = 15) -> dict[str, Any]:
    """The replica's /healthz once `predicate` holds for it (the runner's wait_until polls)."""
    seen: dict[str, Any] = {}

    def holds() -> bool:
        seen.update(health(cluster))
        return bool(predicate(seen))

    wait_until(holds, timeout=timeout, what=what)
    return seen


def replica_rss_mib(cluster: Cluster, replica: str = REPLICA) -> float:
    """The replica process's resident memory, read by its PID (works on any version of it)."""
    pid = cluster.processes[replica].pid
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def room_online(cluster: Cluster, slug: str) -> set[int]:
    client = redis.Redis(port=cluster.redis_port)
    try:
        members = client.zrangebyscore(
            f"sb:{{room:{slug}}}:presence", int(time.time() * 1000), "+inf"
        )
        return {int(m.split(b":")[0]) for m in members}
    finally:
        client.close()


ROOMS_OF_ROOMMAKER = (
    "from chat.models import Room; "
    "print(Room.objects.filter(created_by__username='roommaker0').count())"
)


def shell(cluster: Cluster, code: str) -> str:
    return manage(cluster, "shell", "-v", "0", "-c", code).stdout


async def test_frames_that_crashed_sockets_now_get_errors_and_everything_is_given_back(
    cluster: Cluster,
) -> None:
    witness = await Witness.on(cluster, "crash")
    before = wait_health(cluster, lambda h: True, "a first look")["connections"]
    key = sessions_for(cluster, 1, "crash-rogue")["crash-rogue0"]
    rogue = await socket_for(cluster, key, replica=REPLICA)
    rogue_id = rogue.hello["user_id"]
    await rogue.send_json({"type": "subscribe", "stream": "room:lobby"})
    await rogue.wait_type("subscribed")
    attacks = [
        ("[" * 5000, "bad_json"),
        ('{"type": "echo", "id": "\\ud800", "payload": 1}', "bad_json"),
        ('{"type": "echo", "payload": "\\ud800"}', "bad_json"),
        ('{"type": "echo", "payload": NaN}', "bad_json"),
        (json.dumps({"type": "subscribe", "stream": "user:" + "1" * 5000}), "bad_stream"),
        (json.dumps({"type": "subscribe", "stream": "room:lobby\n"}), "bad_stream"),
    ]
    for count, (text, code) in enumerate(attacks, start=1):
        await rogue.connection.send(text)
        errors = await rogue.wait_type("error", count=count)
        assert errors[-1]["code"] == code, (text[:60], errors[-1])
        await witness.still_hears()
    await rogue.send_json({"type": "echo", "id": "e", "payload": "still open"})
    assert (await rogue.wait_type("echo"))[0]["payload"] == "still open"
    assert rogue_id in room_online(cluster, "lobby")
    assert health(cluster)["stats"]["internal_errors"] == 0

    # A deep ?resume= was an HTTP 500 at the handshake: now hello, then bad_resume.
    deep = await WsClient.open(
        cluster.ws_url + "?resume=" + "%5B" * 1500,  # past Python's recursion limit
        cookie=f"sessionid={key}; SERVERID={REPLICA}",
        origin=origin_of(cluster.url),
    )
    await deep.wait_type("hello")
    assert (await deep.wait_type("error"))[0]["code"] == "bad_resume"
    await witness.still_hears()

    await rogue.close()
    await deep.close()
    # Counted sockets and presence back to what they were: nothing leaked by the attempts.
    wait_health(cluster, lambda h: h["connections"] == before, f"{before} connections again")
    assert rogue_id not in room_online(cluster, "lobby")
    await witness.still_hears()
    await witness.socket.close()


async def test_http_endpoints_answer_400_to_deep_non_standard_or_malformed_input(
    cluster: Cluster,
) -> None:
    bodies = [
        b"[" * 5000,
        b'{"user": "alice", "payload": NaN}',
        b'{"user": "alice", "payload": "\\ud800"}',
    ]
    for body in bodies:
        for path in ("/api/push", "/api/publish", "/api/broadcast"):
            answer = await asyncio.to_thread(api_post, cluster, path, body)
            assert (answer.status_code, answer.json()["error"]) == (400, "bad_json"), (
                path,
                body[:40],
            )
    for stream in ("user:" + "1" * 5000, "room:lobby\n", "room:Lobby", "user:01"):
        answer = await asyncio.to_thread(
            api_post, cluster, "/api/publish", {"stream": stream, "payload": 1}
        )
        assert (answer.status_code, answer.json()["error"]) == (400, "bad_stream"), stream
    # The transport lab, as a logged-in user with the page's CSRF token.
    browser = login(cluster.url, "carol", "carol-pass")
    try:
        headers = {"X-CSRFToken": browser.cookies["csrftoken"], "Content-Type": "application/json"}
        for body in bodies:
            answer = browser.post("/lab/relay", content=body, headers=headers)
            assert (answer.status_code, answer.json()["error"]) == (400, "bad_json")
    finally:
        browser.close()


async def test_a_stuck_replay_holds_a_bounded_number_of_bytes_on_its_replica(
    cluster: Cluster,
) -> None:
    """Four sockets each ask for a room's whole history of 400 x 60 KB and stop reading. Before,
    each replay read 500 entries at once: the replica grew by ~37 MB per socket."""
    witness = await Witness.on(cluster, "replay")
    shell(
        cluster,
        "from chat.models import Room; "
        "Room.objects.get_or_create(slug='archive60k', defaults={'title': 'Archive'})",
    )
    # 400 publishes in one process (the API would take ~40 s through HAProxy for 24 MB).
    shell(
        cluster,
        "from realtime import publish\n"
        "for _ in range(400): "
        "publish.publish_sync(stream='room:archive60k', payload={'blob': 'z' * 60_000})",
    )
    rss_before = replica_rss_mib(cluster)
    keys = sessions_for(cluster, 4, "replay-stuck")
    stuck = []
    for key in keys.values():
        socket = await socket_for(cluster, key, replica=REPLICA)
        socket.reading.clear()  # a tab that stopped reading
        await socket.send_json(
            {"type": "subscribe", "stream": "room:archive60k", "from": {"epoch": None, "seq": 0}}
        )
        stuck.append(socket)
    # Every replay has started and is held back by its socket.
    held = wait_health(
        cluster,
        lambda h: h["stats"]["frames_deferred"] > 0 or h["stats"]["replay_bytes_in_flight"] > 0,
        "the replays to be held back",
    )
    await witness.still_hears()
    # Measured once several replays hold a batch each (about one 60 KB entry's worth or more).
    held = wait_health(
        cluster, lambda h: h["stats"]["replay_bytes_in_flight"] >= 3 * 60_000,
        "several replays to hold their batches",
    )  # fmt: skip
    in_flight = held["stats"]["replay_bytes_in_flight"]
    # Per socket: at most one batch (REPLAY_BATCH_BYTES, 256 KiB, plus an entry's worth).
    assert in_flight <= 4 * (256 * 1024 + 62_000), in_flight
    print(
        "replay memory:",
        json.dumps(
            {
                "rss_before_mib": round(rss_before, 1),
                "rss_held_mib": round(replica_rss_mib(cluster), 1),
                "replay_bytes_in_flight": in_flight,
                "peak": held["stats"]["replay_bytes_in_flight_max"],
            }
        ),
    )
    for socket in stuck:
        await socket.close()
    wait_health(
        cluster, lambda h: h["stats"]["replay_bytes_in_flight"] == 0, "the replays to let go"
    )
    print("replay memory after close:", json.dumps({"rss_mib": round(replica_rss_mib(cluster), 1)}))
    await witness.still_hears()
    await witness.socket.close()


async def test_logout_closes_that_sessions_sockets_on_every_replica(cluster: Cluster) -> None:
    leaving = login(cluster.url, "bob", "bob-pass")
    staying = login(cluster.url, "bob", "bob-pass")
    try:
        origin = origin_of(cluster.url)
        sockets = [
            await WsClient.open(
                cluster.ws_url,
                cookie=f"{cookie_header(leaving.cookies, sticky=False)}; SERVERID={name}",
                origin=origin,
            )
            for name in ("d1", "d2")
        ]
        other = await WsClient.open(
            cluster.ws_url, cookie=cookie_header(staying.cookies), origin=origin
        )
        for socket in [*sockets, other]:
            await socket.wait_type("hello")
        answer = leaving.post(
            "/accounts/logout/", headers={"X-CSRFToken": leaving.cookies["csrftoken"]}
        )
        assert answer.status_code in (200, 302)
        for socket in sockets:
            assert await socket.wait_closed() == 4401
            assert socket.of_type("error")[-1]["code"] == "session_ended"
        push = await asyncio.to_thread(
            api_post, cluster, "/api/push", {"user": "bob", "payload": "other session"}
        )
        assert push.status_code == 200
        await other.wait_for(
            lambda f: any(x.get("payload") == "other session" for x in f), what="the push"
        )
        await other.close()
    finally:
        leaving.close()
        staying.close()


async def test_an_expired_session_closes_its_socket_within_the_check_interval(
    cluster: Cluster,
) -> None:
    key = sessions_for(cluster, 1, "expiry")["expiry0"]
    socket = await socket_for(cluster, key, replica=REPLICA)
    shell(
        cluster,
        "from datetime import timedelta; from django.utils import timezone; "
        "from django.contrib.sessions.models import Session; "
        f"Session.objects.filter(pk='{key}')"
        ".update(expire_date=timezone.now() - timedelta(seconds=1))",
    )
    assert await socket.wait_closed(timeout=10) == 4401  # SESSION_CHECK_SECS=1 in this cluster
    assert socket.of_type("error")[-1]["code"] == "session_ended"


async def test_a_user_gets_at_most_twenty_sockets_across_the_replicas(cluster: Cluster) -> None:
    witness = await Witness.on(cluster, "many")
    key = sessions_for(cluster, 1, "many-sockets")["many-sockets0"]
    origin = origin_of(cluster.url)
    sockets = []
    for n in range(20):  # spread over the three replicas: the count is the cluster's
        replica = cluster.replica_names[n % 3]
        sockets.append(await socket_for(cluster, key, replica=replica))
    assert {s.hello["replica"] for s in sockets} == set(cluster.replica_names)
    refused = await WsClient.open(
        cluster.ws_url, cookie=f"sessionid={key}; SERVERID={REPLICA}", origin=origin
    )
    assert await refused.wait_closed() == 4429
    assert refused.frames[0]["code"] == "too_many_sockets"
    await witness.still_hears()
    await sockets.pop().close()
    again = await WsClient.open(cluster.ws_url, cookie=f"sessionid={key}", origin=origin)
    await again.wait_type("hello")  # the closed socket's place is free at once
    for socket in [*sockets, again, witness.socket]:
        await socket.close()


async def test_a_frame_flood_is_refused_then_closed_with_1008_and_the_witness_hears(
    cluster: Cluster,
) -> None:
    witness = await Witness.on(cluster, "flood")
    key = sessions_for(cluster, 1, "flooder")["flooder0"]
    flooder = await socket_for(cluster, key, replica=REPLICA)
    for n in range(600):
        await flooder.send_json({"type": "ping", "id": f"p{n}"})
    assert await flooder.wait_closed() == 1008
    pongs, errors = flooder.of_type("pong"), flooder.of_type("error")
    assert 200 <= len(pongs) < 300  # the burst of 200, plus what refilled meanwhile
    assert {e["code"] for e in errors} == {"rate_limited"} and len(errors) <= 60
    assert health(cluster)["stats"]["frames_rate_limited"] >= len(errors)
    await witness.still_hears()
    await witness.socket.close()


async def test_typing_floods_are_throttled_and_chat_lines_are_limited_per_minute(
    cluster: Cluster,
) -> None:
    keys = sessions_for(cluster, 2, "typist")
    typist = await socket_for(cluster, keys["typist0"], replica=REPLICA)
    listener = await WsClient.open(
        cluster.ws_url + "?ephemeral=1",
        cookie=f"sessionid={keys['typist1']}; SERVERID={REPLICA}",
        origin=origin_of(cluster.url),
    )
    await listener.wait_type("hello")
    for socket in (typist, listener):
        await socket.send_json({"type": "subscribe", "stream": "room:lobby"})
        await socket.wait_type("subscribed")
    for n in range(150):  # within the frame rate's burst of 200: only the typing throttle acts
        await typist.send_json(
            {
                "type": "publish",
                "id": f"t{n}",
                "stream": "room:lobby",
                "payload": {"kind": "typing"},
            }
        )
    await typist.wait_for(
        lambda f: len([x for x in f if x.get("type") in ("ack", "error")]) >= 150,
        what="150 answers",
    )
    assert {e["code"] for e in typist.of_type("error")} == {"rate_limited"}
    assert len(typist.of_type("ack")) <= 12  # the burst of 10, and one a second meanwhile
    await typist.send_json(
        {"type": "echo", "id": "fence", "payload": 1}
    )  # after every typing frame
    await typist.wait_type("echo")
    await listener.send_json({"type": "echo", "id": "fence", "payload": 1})
    await listener.wait_type("echo")
    assert 1 <= len(listener.of_type("typing")) <= 12  # each of the 150 was fanned out before

    for n in range(31):
        text = {"kind": "chat", "text": f"line {n}"}
        await typist.send_json(
            {"type": "publish", "id": f"c{n}", "stream": "room:lobby", "payload": text}
        )
    await typist.wait_for(
        lambda f: any(x.get("ref") == "c30" or x.get("id") == "c30" for x in f), what="c30's answer"
    )
    refused = [e for e in typist.of_type("error") if e.get("ref") == "c30"]
    assert refused and refused[0]["code"] == "rate_limited"
    await typist.close()
    await listener.close()


async def test_streams_per_socket_and_rooms_per_user_are_capped(cluster: Cluster) -> None:
    shell(
        cluster,
        "from chat.models import Room\n"
        "for n in range(50): "
        "Room.objects.get_or_create(slug=f'cap-{n}', defaults={'title': 'cap'})",
    )
    key = sessions_for(cluster, 1, "capped")["capped0"]
    socket = await socket_for(cluster, key, replica=REPLICA)
    for n in range(50):
        await socket.send_json({"type": "subscribe", "stream": f"room:cap-{n}", "id": f"s{n}"})
    await socket.wait_for(
        lambda f: len([x for x in f if x.get("type") in ("subscribed", "error")]) >= 50,
        what="answers",
    )
    assert len(socket.of_type("subscribed")) == 48  # 50 with its user stream and broadcast
    assert [e["code"] for e in socket.of_type("error")] == ["too_many_streams"] * 2
    await socket.close()

    # A user of its own (the demo users' rooms are the e2e tests'), with a CSRF pair of ours.
    key = sessions_for(cluster, 1, "roommaker")["roommaker0"]
    token = "r" * 32
    cookies = {"sessionid": key, "csrftoken": token}
    async with httpx.AsyncClient(base_url=cluster.url, cookies=cookies, timeout=10) as browser:
        for n in range(21):
            await browser.post(
                "/chat/create/",
                data={"slug": f"maker-{n}", "title": "x", "csrfmiddlewaretoken": token},
            )
        count = shell(cluster, ROOMS_OF_ROOMMAKER)
        assert int(count) == 20
        page = await browser.get("/chat/")
        assert "the most one user may" in page.text


def test_what_a_user_sees_of_internals(cluster: Cluster) -> None:
    key = sessions_for(cluster, 1, "nosy")["nosy0"]
    through_proxy = httpx.get(
        f"{cluster.url}/healthz", cookies={"sessionid": key}, timeout=10
    ).json()
    assert set(through_proxy) == {"replica", "status"}  # no counters, no Redis details
    staff = login(cluster.url, "admin", "admin-pass")
    try:
        assert "stats" in staff.get("/healthz").json()
    finally:
        staff.close()
    assert "stats" in health(cluster)  # on this host, straight to the replica (HAProxy's check)
    wrong_host = httpx.post(
        f"{cluster.url}/api/push",
        content=b"{}",
        timeout=10,
        headers={"Host": "evil.example", "Authorization": "Bearer x"},
    )
    assert wrong_host.status_code == 400
    assert wrong_host.json()["message"] == "This host name is not served here."
    result = manage(cluster, "push", "--user", "alice", "--json", '{"x": NaN}', check=False)
    assert result.returncode != 0 and "NaN" in result.stderr
