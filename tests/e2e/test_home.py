"""The home page in a real browser: logged in, on a named replica, receiving a push."""

from __future__ import annotations

from typing import Any

from devtools.cluster import Cluster
from tests.conftest import manage
from tests.e2e.conftest import LoginPage, screenshot


def test_home_page_names_its_replica_and_shows_a_push(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    page: Any = browser_user("alice", replica="d2")
    assert page.locator("#page-replica").inner_text() == "d2"
    page.wait_for_function("document.getElementById('ws-replica').textContent === 'd2'")
    manage(healthy_cluster, "push", "--user", "alice", "<b>hi</b> from e2e")
    item = page.locator("#log li", has_text="from e2e")
    item.wait_for()
    # Escaped: the markup arrives as text, not as an element.
    assert "<b>hi</b> from e2e" in item.inner_text()
    assert page.locator("#log li b").count() == 0
    screenshot(page, "home")
