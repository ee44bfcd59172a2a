"""Admin pages of the realtime app, through HAProxy: rooms and each user's delivery ledger."""

from __future__ import annotations

import re
import uuid

import httpx

from devtools.cluster import Cluster, wait_until
from tests.cluster.helpers import api_post
from tests.support.clients import WsClient, cookie_header, login, open_user_socket

ROW = re.compile(r'<tr class="ledger-row" data-seq="(\d+)" data-state="(\w+)"')


def ledger_states(admin: httpx.Client, user_id: int) -> dict[int, str]:
    page = admin.get(f"/admin/realtime/ledger/{user_id}/")
    assert page.status_code == 200, page.status_code
    return {int(seq): state for seq, state in ROW.findall(page.text)}


async def test_ledger_shows_each_message_sent_delivered_or_acknowledged(
    healthy_cluster: Cluster,
) -> None:
    alice = login(healthy_cluster.url, "alice", "alice-pass")
    admin = login(healthy_cluster.url, "admin", "admin-pass")
    ws = await open_user_socket(healthy_cluster.ws_url, alice)
    try:
        user_id = ws.hello["user_id"]
        stream = f"user:{user_id}"
        seqs = []
        for text in ("first", "<script>second</script>"):
            answer = api_post(
                healthy_cluster, "/api/push", {"user": "alice", "payload": {"text": text}}
            )
            seqs.append(answer.json()["seq"])
        await ws.wait_for(
            lambda frames: [f.get("seq") for f in frames if f.get("type") == "push"][-2:] == seqs,
            what="both pushes",
        )
        await ws.send_json({"type": "ack", "stream": stream, "seq": seqs[0]})
        # The socket records delivery every half second; the ack is written as it comes.
        wait_until(
            lambda: (
                {s: ledger_states(admin, user_id).get(s) for s in seqs}
                == {seqs[0]: "acknowledged", seqs[1]: "delivered"}
            ),
            timeout=10,
            what="the ledger to show one message acked and one delivered",
        )
        page = admin.get(f"/admin/realtime/ledger/{user_id}/").text
        assert "&lt;script&gt;second&lt;/script&gt;" in page and "<script>second" not in page
        await ws.close()
        # Sent while alice has no socket: stored, neither delivered nor acknowledged.
        third = api_post(healthy_cluster, "/api/push", {"user": "alice", "payload": {"text": "3"}})
        assert ledger_states(admin, user_id)[third.json()["seq"]] == "sent"
        users = admin.get("/admin/auth/user/").text
        assert f'href="/admin/realtime/ledger/{user_id}/"' in users
    finally:
        await ws.close()
        alice.close()
        admin.close()


def test_ledger_and_room_admin_are_refused_to_non_staff(healthy_cluster: Cluster) -> None:
    alice = login(healthy_cluster.url, "alice", "alice-pass")
    try:
        for path in ("/admin/realtime/ledger/1/", "/admin/chat/room/", "/admin/realtime/room/"):
            answer = alice.get(path)
            assert answer.status_code == 302 and "/admin/login/" in answer.headers["location"]
    finally:
        alice.close()


def test_room_admin_lists_and_adds_rooms(healthy_cluster: Cluster) -> None:
    admin = login(healthy_cluster.url, "admin", "admin-pass")
    try:
        assert admin.get("/admin/chat/room/").status_code == 200
        form = admin.get("/admin/chat/room/add/")
        assert form.status_code == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token
        slug = f"admin-made-{uuid.uuid4().hex[:8]}"
        created = admin.post(
            "/admin/chat/room/add/",
            data={
                "slug": slug,
                "title": "Made in the admin",
                "csrfmiddlewaretoken": token.group(1),
            },
        )
        assert created.status_code == 302, created.text[:2000]
        listing = admin.get(f"/admin/chat/room/?q={slug}").text
        assert slug in listing
        assert "Bad Slug" not in listing
        bad = admin.post(
            "/admin/chat/room/add/",
            data={"slug": "Bad Slug", "title": "x", "csrfmiddlewaretoken": token.group(1)},
        )
        assert bad.status_code == 200 and "lower-case letters" in bad.text
    finally:
        admin.close()


async def test_presence_page_lists_who_is_online_per_room_and_refuses_non_staff(
    healthy_cluster: Cluster,
) -> None:
    bob = login(healthy_cluster.url, "bob", "bob-pass")
    admin = login(healthy_cluster.url, "admin", "admin-pass")
    # A socket subscribed to #lobby has a presence entry there, like bob's chat page.
    ws = await WsClient.open(healthy_cluster.ws_url, cookie=cookie_header(bob.cookies))
    await ws.wait_type("hello")
    await ws.send_json({"type": "subscribe", "stream": "room:lobby"})
    await ws.wait_type("subscribed")
    try:
        lobby_row = re.compile(r"#lobby .*?</td>\s*<td>(.*?)</td>", re.S)

        def lobby_online() -> str:
            page = admin.get("/admin/realtime/presence/")
            assert page.status_code == 200
            match = lobby_row.search(page.text)
            return match.group(1) if match else ""

        wait_until(lambda: "bob" in lobby_online(), timeout=15, what="bob online in #lobby")
        assert bob.get("/admin/realtime/presence/").status_code == 302  # not staff: to the login
    finally:
        await ws.close()
        bob.close()
        admin.close()


def test_chat_messages_admin_is_read_only(healthy_cluster: Cluster) -> None:
    admin = login(healthy_cluster.url, "admin", "admin-pass")
    try:
        assert admin.get("/admin/chat/chatmessage/").status_code == 200
        assert admin.get("/admin/chat/chatmessage/add/").status_code == 403
    finally:
        admin.close()


def test_room_and_line_admin_pages_at_their_old_addresses_redirect_to_the_chat_app(
    healthy_cluster: Cluster,
) -> None:
    admin = login(healthy_cluster.url, "admin", "admin-pass")
    try:
        for old, new in (
            ("/admin/realtime/room/", "/admin/chat/room/"),
            ("/admin/realtime/room/?q=lobby", "/admin/chat/room/?q=lobby"),
            ("/admin/realtime/room/add/", "/admin/chat/room/add/"),
            ("/admin/realtime/chatmessage/", "/admin/chat/chatmessage/"),
        ):
            answer = admin.get(old)
            assert answer.status_code == 307 and answer.headers["location"] == new, old
        assert admin.get("/admin/realtime/room/", follow_redirects=True).status_code == 200
    finally:
        admin.close()
