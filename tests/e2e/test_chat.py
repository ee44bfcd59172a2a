"""The chat in real browsers: two users on two replicas, presence, escaping, a replica's death,
a reload — each message shown exactly once, in order."""

from __future__ import annotations

import time
import uuid
from typing import Any

from devtools.cluster import Cluster
from realtime import presence
from tests.conftest import manage
from tests.e2e.conftest import LoginPage, screenshot

TEXTS_JS = (
    "() => [...document.querySelectorAll('#messages li.msg[data-id] .text')]"
    ".map(e => e.textContent)"
)


def texts(page: Any) -> list[str]:
    return page.evaluate(TEXTS_JS)  # type: ignore[no-any-return]


def wait_texts(page: Any, expected: list[str], timeout_ms: int = 20_000) -> None:
    """Wait until the page shows exactly `expected` (each once, in this order)."""
    try:
        page.wait_for_function(
            f"(want) => JSON.stringify(({TEXTS_JS})()) === JSON.stringify(want)",
            arg=expected,
            timeout=timeout_ms,
        )
    except Exception:
        raise AssertionError(
            f"messages on the page: {texts(page)!r}; expected {expected!r}"
        ) from None


def wait_live(page: Any, *, not_on: str | None = None) -> str:
    """Wait until the page's socket is open (on another replica than `not_on`); its replica."""
    page.wait_for_function(
        "(avoid) => { const s = document.getElementById('conn-status');"
        " return s.dataset.state === 'open' && s.dataset.replica !== avoid; }",
        arg=not_on or "",
    )
    return page.locator("#conn-status").get_attribute("data-replica")  # type: ignore[no-any-return]


def create_room(page: Any, prefix: str = "e2e", title: str = "") -> str:
    """Create a room through the room list's form; the page ends up in it. Returns its slug."""
    slug = f"{prefix}-{uuid.uuid4().hex[:6]}"
    page.goto("/chat/")
    page.fill("#create-room input[name=slug]", slug)
    page.fill("#create-room input[name=title]", title)
    page.click("#create-room button[type=submit]")
    page.wait_for_url(f"**/chat/{slug}/")
    return slug


def say(page: Any, text: str) -> None:
    page.fill("#send-text", text)
    page.press("#send-text", "Enter")


def test_alice_and_bob_chat_across_replicas_through_a_replica_death_and_a_reload(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    alice = browser_user("alice", replica="d1", path="/chat/")
    side = create_room(alice, "side", "Side room")  # a second room of hers, not in view
    slug = create_room(alice, "e2e", "Tea & <biscuits>")
    assert wait_live(alice) == "d1"
    bob = browser_user("bob", replica="d2", path=f"/chat/{slug}/")
    assert wait_live(bob) == "d2"
    assert bob.locator("h1").inner_text().startswith("Tea & <biscuits>")  # the title, as text

    # Presence, across replicas: each sees the other.
    alice.locator('#presence li.online[data-user="bob"]').wait_for()
    bob.locator('#presence li.online[data-user="alice"]').wait_for()

    said = ["hello bob", "<script>window.pwned = 1</script><b>hi</b> alice", "how are you?"]
    say(alice, said[0])
    wait_texts(bob, said[:1])  # one at a time, so the order is the order they were said
    say(bob, said[1])
    wait_texts(alice, said[:2])
    say(alice, said[2])
    for page in (alice, bob):
        wait_texts(page, said)
        # Escaped: the markup is text, nothing ran, no element was made from it.
        assert page.evaluate("window.pwned") is None
        assert page.locator("#messages script, #messages b").count() == 0
    # Unread counts for rooms not in view: carol speaks in alice's side room.
    carol = browser_user("carol", replica="d3", path=f"/chat/{side}/")
    wait_live(carol)
    say(carol, "psst")
    say(carol, "over here")
    alice.locator(f'#room-list li[data-room="{side}"] .unread', has_text="2").wait_for()
    carol.context.close()
    bob.fill("#send-text", "typing…")
    bob.dispatch_event("#send-text", "input")
    alice.locator("#typing", has_text="bob is typing").wait_for()
    bob.fill("#send-text", "")

    # alice's replica dies: her page reconnects elsewhere by itself and says so; what bob
    # says meanwhile arrives once, in order.
    healthy_cluster.kill_replica("d1")
    killed = time.monotonic()
    meanwhile = [f"while you were away {n}" for n in range(1, 4)]
    for text in meanwhile:
        say(bob, text)
    new_replica = wait_live(alice, not_on="d1")
    print(
        f"alice's page was live again on {new_replica} "
        f"{time.monotonic() - killed:.2f} s after d1 died"
    )
    assert new_replica in ("d2", "d3")
    assert "reconnected to" in alice.locator("#conn-status").inner_text()
    wait_texts(alice, said + meanwhile)
    wait_texts(bob, said + meanwhile)
    bob.type("#send-text", "and")  # real keystrokes: the typing indicator, after the failover
    alice.locator("#typing", has_text="bob is typing").wait_for()
    screenshot(alice, "chat")
    bob.fill("#send-text", "")

    # A reload resumes without duplicates: a message said after it is the only new one.
    alice.reload()
    wait_live(alice, not_on="d1")
    say(bob, "after the reload")
    wait_texts(alice, said + meanwhile + ["after the reload"])

    # bob leaves: alice sees him go.
    bob.context.close()
    alice.locator('#presence li[data-user="bob"]').wait_for(state="detached")
    assert (
        alice.locator('#members li[data-user="bob"]').count() == 0
    )  # bob never joined as a member
    assert texts(alice) == said + meanwhile + ["after the reload"]


def test_after_redis_lost_its_data_the_page_catches_up_from_the_database(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    alice = browser_user("alice", replica="d1", path="/chat/")
    slug = create_room(alice)
    wait_live(alice)
    bob = browser_user("bob", replica="d3", path=f"/chat/{slug}/")
    wait_live(bob)
    say(bob, "before the restart")
    wait_texts(alice, ["before the restart"])
    position_js = f"window.switchboard.positions['room:{slug}']"
    old_epoch = alice.evaluate(position_js)["epoch"]
    # Redis stops, and comes back without persistence: every stream, its history and its epoch
    # are gone. A line said meanwhile is stored in the database; its publish waits for Redis.
    healthy_cluster.stop_redis()
    say(bob, "while Redis was down")
    healthy_cluster.start_redis()
    say(bob, "after the restart")
    expected = ["before the restart", "while Redis was down", "after the restart"]
    wait_texts(alice, expected, timeout_ms=40_000)
    wait_texts(bob, expected, timeout_ms=40_000)
    # The stream began a new epoch; alice's client was told (resumed, recovered: false) and her
    # page read the rows from the database instead of reloading.
    assert alice.evaluate(position_js)["epoch"] not in (None, old_epoch)
    assert int(alice.locator("#messages").get_attribute("data-catch-ups") or 0) >= 1


def test_a_user_whose_replica_died_goes_offline_for_the_others_within_the_ttl(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    alice = browser_user("alice", replica="d1", path="/chat/")
    slug = create_room(alice)
    wait_live(alice)
    carol = browser_user("carol", replica="d3", path=f"/chat/{slug}/")
    assert wait_live(carol) == "d3"
    alice.locator('#presence li.online[data-user="carol"]').wait_for()
    # carol's machine drops off the network as her replica dies: nobody runs disconnect() for
    # her socket, and she cannot come back. Only the TTL of her entry can tell.
    carol.context.set_offline(True)
    healthy_cluster.kill_replica("d3")
    started = time.monotonic()
    beat = float(
        healthy_cluster.config.env.get("PRESENCE_HEARTBEAT_SECS", presence.DEFAULT_HEARTBEAT_SECS)
    )
    ttl_secs = beat * presence.TTL_HEARTBEATS
    alice.locator('#presence li[data-user="carol"]').wait_for(
        state="detached", timeout=(ttl_secs + 10) * 1000
    )
    waited = time.monotonic() - started
    print(f"carol went offline on alice's page {waited:.1f} s after d3 died (TTL {ttl_secs:.0f} s)")
    assert waited <= ttl_secs + beat + 2
    assert alice.locator('#presence li.online[data-user="alice"]').count() == 1


def test_a_member_removed_from_a_private_room_is_told_so_on_the_page(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    slug = f"private-{uuid.uuid4().hex[:6]}"
    room = f"Room.objects.get(slug='{slug}')"
    alice_user = "User.objects.get(username='alice')"
    imports = "from chat.models import Room; from django.contrib.auth.models import User; "
    manage(
        healthy_cluster,
        "shell",
        "-c",
        imports
        + f"Room.objects.create(slug='{slug}', title='Private', is_private=True)"
        + f".members.add({alice_user})",
    )
    alice = browser_user("alice", replica="d1", path=f"/chat/{slug}/")
    wait_live(alice)
    # An operator removes her, from another process: her socket on d1 hears of it through Redis.
    manage(healthy_cluster, "shell", "-c", imports + f"{room}.members.remove({alice_user})")
    alice.wait_for_function(
        "() => document.getElementById('conn-status').textContent"
        ".includes('no longer have access')",
        timeout=15_000,
    )
    screenshot(alice, "chat-access-revoked")


def test_a_published_payload_dressed_as_a_chat_line_is_shown_as_a_note_not_as_its_user(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    """A token holder (or staff) can publish any payload to a room; only the server names a chat
    line's author (`sender`), so a payload claiming to be bob's line is not shown as one."""
    from tests.cluster.helpers import api_post

    alice = browser_user("alice", replica="d1", path="/chat/")
    slug = create_room(alice, "spoof", "Spoof")
    wait_live(alice)
    fake = {
        "kind": "chat",
        "id": 10**9,
        "user": "bob",
        "user_id": 2,
        "text": "I, bob, resign",
        "created_at": "2026-01-01T00:00:00+00:00",
    }
    answer = api_post(healthy_cluster, "/api/publish", {"stream": f"room:{slug}", "payload": fake})
    assert answer.status_code == 200, answer.text
    alice.wait_for_function(
        "() => [...document.querySelectorAll('#messages li.note')]"
        ".some(n => n.textContent.includes('I, bob, resign'))"
    )
    assert texts(alice) == []  # not a chat line of bob's
    assert alice.locator("#messages li.msg .who", has_text="bob").count() == 0
    say(alice, "a real line")
    wait_texts(alice, ["a real line"])
    assert alice.locator("#messages li.msg .who").all_inner_texts() == ["alice"]


def test_the_chat_works_over_sse_when_websockets_are_blocked(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    """A network that lets no WebSocket through: alice's page falls back to Server-Sent Events
    by itself after a few failed sockets, and she chats with bob (on a WebSocket) both ways."""
    alice = browser_user("alice", replica="d1", path="/chat/")
    slug = create_room(alice, "sse", "Over SSE")
    alice.context.route_web_socket("**/ws/**", lambda ws: ws.close(code=4000, reason="blocked"))
    alice.goto(f"/chat/{slug}/")
    wait_live(alice)
    assert alice.evaluate("window.switchboard.transport") == "sse"
    bob = browser_user("bob", replica="d2", path=f"/chat/{slug}/")
    wait_live(bob)
    assert bob.evaluate("window.switchboard.transport") == "websocket"
    say(alice, "hello over SSE")
    wait_texts(bob, ["hello over SSE"])
    say(bob, "hello over a WebSocket")
    wait_texts(alice, ["hello over SSE", "hello over a WebSocket"])
    alice.locator('#presence li.online[data-user="bob"]').wait_for()
    screenshot(alice, "chat-over-sse")
