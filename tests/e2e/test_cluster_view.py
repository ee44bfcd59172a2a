"""The cluster view in a real browser: replicas as HAProxy sees them, updated live via `ops`.

Each replica card carries data-replica, data-state (UP, draining, DOWN…) and data-reports (how
many ops reports the page has received from it): what these tests wait on.
"""

from __future__ import annotations

from typing import Any

import httpx

from devtools.cluster import Cluster
from tests.e2e.conftest import LoginPage, screenshot


def reports(page: Any, replica: str) -> int:
    return int(page.get_attribute(f".replica[data-replica={replica}]", "data-reports"))


def wait_reports_above(page: Any, counts: dict[str, int]) -> None:
    """Wait until each named replica has sent the page more reports than `counts` says."""
    page.wait_for_function(
        """(counts) => Object.entries(counts).every(([name, count]) =>
             Number(document.querySelector(`.replica[data-replica=${name}]`).dataset.reports)
             > count)""",
        arg=counts,
    )


def wait_state(page: Any, replica: str, state: str, timeout_ms: int = 15_000) -> None:
    page.wait_for_selector(
        f".replica[data-replica={replica}][data-state='{state}']", timeout=timeout_ms
    )


def test_cluster_view_shows_three_replicas_up_updating_live(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    page = browser_user("admin", path="/cluster/")
    for name in ("d1", "d2", "d3"):
        wait_state(page, name, "UP")
    # Live: every replica keeps reporting while the page is open.
    wait_reports_above(page, {"d1": 1, "d2": 1, "d3": 1})
    wait_reports_above(page, {name: reports(page, name) for name in ("d1", "d2", "d3")})
    assert page.locator(".replica").count() == 3
    # Traffic on d2 shows up in d2's numbers: a lab page there echoing frames.
    lab = browser_user("alice", replica="d2", path="/lab/")
    lab.wait_for_function("document.getElementById('ws-replica').textContent === 'd2'")
    # Bursts of different sizes, one per report, so the chart has a shape.
    for burst in (4, 16, 8):
        count = reports(page, "d2")
        for _ in range(burst):
            lab.click("#way2")
        wait_reports_above(page, {"d2": count})
    d2_in = ".replica[data-replica=d2] [data-field=in]"
    page.wait_for_function(f"Number(document.querySelector('{d2_in}').textContent) > 0")
    assert "ok" in page.locator(".replica[data-replica=d1] [data-field=redis]").inner_text()
    assert page.locator("#redis-summary").inner_text().startswith("reachable")
    screenshot(page, "cluster")


def test_cluster_view_shows_a_draining_and_a_dead_replica(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    page = browser_user("admin", replica="d1", path="/cluster/")
    wait_state(page, "d2", "UP")
    try:
        healthy_cluster.haproxy_command("set server replicas/d2 state drain")
        wait_state(page, "d2", "draining")
    finally:
        healthy_cluster.haproxy_command("set server replicas/d2 state ready")
    wait_state(page, "d2", "UP")
    healthy_cluster.kill_replica("d3")
    # d3 cannot report its own death: the others report HAProxy's view of it.
    wait_state(page, "d3", "DOWN")
    page.wait_for_selector(".replica[data-replica=d3].silent")
    screenshot(page, "cluster-d3-down")


def test_cluster_view_is_refused_to_a_non_staff_user(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    page = browser_user("carol", path="/")
    response = page.goto("/cluster/")
    assert response is not None and response.status == 403
    assert page.locator(".replica").count() == 0


def test_cluster_view_says_when_reports_stop_and_resumes_after_redis_returns(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    page = browser_user("admin", path="/cluster/")
    wait_reports_above(page, {"d1": 0, "d2": 0, "d3": 0})
    healthy_cluster.stop_redis()
    try:
        # Reports travel through Redis: with it gone, none arrives, and the page says so.
        page.wait_for_function(
            "document.getElementById('redis-summary').textContent.includes('Redis down?')"
        )
        assert page.locator(".replica.silent").count() == 3
    finally:
        healthy_cluster.start_redis()
    # The page's socket and the replicas' publishers recover by themselves.
    page.wait_for_function(
        "document.getElementById('redis-summary').textContent.startsWith('reachable')",
        timeout=30_000,
    )
    page.wait_for_selector(".replica:not(.silent)")


def test_staff_drain_a_replica_from_its_card_and_take_it_back(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    """The Drain button on d2's card, wherever the page's own requests land: d2 stops being
    ready (HAProxy takes it out) and says it is draining; Undrain brings it back."""
    page = browser_user("admin", path="/cluster/")
    wait_state(page, "d2", "UP")
    button = page.locator(".replica[data-replica=d2] button.drain")
    button.click()
    page.wait_for_function(
        "document.querySelector('.replica[data-replica=d2] button.drain')"
        ".textContent.startsWith('Undrain')"
    )
    ready = httpx.get(f"{healthy_cluster.replica_url('d2')}/readyz", timeout=5)
    assert ready.status_code == 503 and "draining" in ready.json()["reasons"][0]
    wait_state(page, "d2", "draining")  # HAProxy says DOWN (not ready); the report, draining
    screenshot(page, "cluster-view-d2-draining")
    button.click()
    page.wait_for_function(
        "document.querySelector('.replica[data-replica=d2] button.drain').textContent === 'Drain'"
    )
    wait_state(page, "d2", "UP")
    assert httpx.get(f"{healthy_cluster.replica_url('d2')}/readyz", timeout=5).status_code == 200
