"""client.js in a real browser: what was pushed while no page held a socket is replayed from the
position kept in sessionStorage — once — and the outbox survives a dead replica."""

from __future__ import annotations

import json
from typing import Any

from devtools.cluster import Cluster
from tests.conftest import manage
from tests.e2e.conftest import LoginPage
from tests.e2e.test_chat import create_room

PUSHES_JS = (
    "() => [...document.querySelectorAll('#log li')]"
    ".map(li => li.textContent).filter(t => t.includes('note '))"
)


def wait_pushes(page: Any, expected: list[str]) -> None:
    """Wait until the home page's log shows exactly these pushes (newest first, as it lists)."""
    try:
        page.wait_for_function(
            f"(want) => {{ const got = ({PUSHES_JS})(); return got.length === want.length"
            " && want.every((w, i) => got[i].includes(w)); }",
            arg=expected,
        )
    except Exception:
        raise AssertionError(f"log: {page.evaluate(PUSHES_JS)!r}; expected {expected!r}") from None


def test_a_page_load_resumes_from_session_storage_without_duplicates(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    page = browser_user("alice", replica="d3")
    page.wait_for_function("document.getElementById('ws-replica').textContent === 'd3'")
    manage(healthy_cluster, "push", "--user", "alice", "note 1")
    wait_pushes(page, ["note 1"])
    stored = json.loads(page.evaluate("sessionStorage.getItem('switchboard.positions')"))
    user_stream = next(s for s in stored if s.startswith("user:"))
    assert stored[user_stream]["seq"] >= 1
    # Away from any socket (the room list has none) while two more pushes are sent.
    page.goto("/chat/")
    manage(healthy_cluster, "push", "--user", "alice", "note 2")
    manage(healthy_cluster, "push", "--user", "alice", "note 3")
    page.goto("/")
    # Back: 2 and 3 are replayed, 1 is not shown again (the log starts empty on each load).
    wait_pushes(page, ["note 3", "note 2"])
    manage(healthy_cluster, "push", "--user", "alice", "note 4")
    wait_pushes(page, ["note 4", "note 3", "note 2"])
    after = json.loads(page.evaluate("sessionStorage.getItem('switchboard.positions')"))
    assert after[user_stream]["seq"] == stored[user_stream]["seq"] + 3
    assert page.evaluate("window.switchboard === undefined")  # the home page keeps it private


def test_a_chat_line_sent_while_the_replica_is_dead_is_delivered_once(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    page = browser_user("carol", replica="d2", path="/chat/")
    slug = create_room(page, "outbox")
    page.wait_for_function("document.getElementById('conn-status').dataset.replica === 'd2'")
    healthy_cluster.kill_replica("d2")
    # Said at once: onto a socket that is dying or already gone; either way it waits in the
    # outbox until a hello from another replica, then is resent under the same id.
    page.fill("#send-text", "sent into the void")
    page.press("#send-text", "Enter")
    page.wait_for_function(
        "() => document.querySelectorAll('#messages li.msg[data-id]').length === 1"
        " && document.querySelectorAll('#messages li.pending').length === 0"
        " && document.getElementById('conn-status').dataset.replica !== 'd2'"
    )
    assert page.locator("#messages li.msg .text").all_inner_texts() == ["sent into the void"]
    assert page.evaluate("window.switchboard.outbox.size") == 0
    assert page.evaluate("window.switchboard.stats.reconnects") >= 1
    rows = page.request.get(f"/chat/{slug}/messages").json()["messages"]
    assert [m["text"] for m in rows] == ["sent into the void"]  # stored once


def test_logging_out_in_another_tab_closes_the_socket_with_4401_and_the_client_stays_down(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    page = browser_user("bob", path="/chat/")
    create_room(page, "logout")
    page.wait_for_function("document.getElementById('conn-status').dataset.state === 'open'")
    opened: list[str] = []
    page.on("websocket", lambda ws: opened.append(ws.url))
    other = page.context.new_page()  # the same browser, another tab: log out there
    other.goto("/chat/")
    other.click("header form button[type=submit]")
    other.wait_for_url("**/accounts/login/")
    # The server ends the socket of the session that logged out (4401, session_ended), on
    # whichever replica holds it; the page did nothing.
    page.wait_for_function("document.getElementById('conn-status').dataset.state === 'down'")
    assert "logged out" in page.locator("#conn-status").inner_text()
    assert opened == [] and page.evaluate("window.switchboard.final")
    # Refused with 4401: it stays down instead of retrying with backoff.
    try:
        page.wait_for_function("window.switchboard.socket !== null", timeout=2_000)
    except Exception:
        pass
    else:
        raise AssertionError("the client reconnected after a 4401")
    assert opened == []
