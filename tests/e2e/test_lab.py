"""The transport lab in a real browser: which way arrives, and which replica handled each step.

The page logs every step as an <li> with data-kind (http / ws), data-way, data-replica, data-id
and, for way 3, data-held: what these tests read. Waits are on the page's own state.
"""

from __future__ import annotations

from typing import Any

from devtools.cluster import Cluster
from tests.e2e.conftest import LoginPage, screenshot


def lines(page: Any, selector: str) -> list[dict[str, str]]:
    """The log lines matching `selector`, oldest first, as their data-* attributes."""
    found = page.eval_on_selector_all(
        f"#lab-log li{selector}", "items => items.map(item => ({...item.dataset}))"
    )
    return list(reversed(found))


def click(page: Any, button: str, times: int) -> None:
    for _ in range(times):
        page.click(f"#{button}")


def wait_lines(page: Any, selector: str, count: int) -> list[dict[str, str]]:
    page.wait_for_function(
        "([sel, count]) => document.querySelectorAll(`#lab-log li${sel}`).length >= count",
        arg=[selector, count],
    )
    return lines(page, selector)


def test_way4_always_arrives_and_way3_only_when_the_request_hits_the_sockets_replica(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    page = browser_user("alice", replica="d1", path="/lab/")
    page.wait_for_function("document.getElementById('ws-replica').textContent === 'd1'")

    click(page, "way1-sticky", 2)
    click(page, "way1-nosticky", 3)
    answered = wait_lines(page, "[data-kind=http][data-way='1']", 5)
    assert {line["replica"] for line in answered if line["sticky"] == "yes"} == {"d1"}

    click(page, "way4-sticky", 2)
    click(page, "way4-nosticky", 4)
    page.wait_for_function("document.getElementById('way4-arrived').textContent === '6'")
    sent = wait_lines(page, "[data-kind=http][data-way='4']", 6)
    arrived = wait_lines(page, "[data-kind=ws][data-way='4']", 6)
    assert sorted(line["id"] for line in arrived) == sorted(line["id"] for line in sent)
    assert {line["replica"] for line in arrived} == {"d1"}  # delivered by the socket's replica
    assert {line["origin"] for line in arrived} == {line["replica"] for line in sent}

    click(page, "way3-sticky", 2)
    click(page, "way3-nosticky", 6)
    answers = wait_lines(page, "[data-kind=http][data-way='3']", 8)
    # Whatever was written to the socket was written before its echo comes back.
    click(page, "way2", 1)
    wait_lines(page, "[data-kind=ws][data-way='2']", 1)
    direct = lines(page, "[data-kind=ws][data-way='3']")

    for answer in answers:
        assert (answer["held"] == "yes") == (answer["replica"] == "d1"), answer
    held = {answer["id"] for answer in answers if answer["held"] == "yes"}
    assert sorted(line["id"] for line in direct) == sorted(held)
    assert {line["replica"] for line in direct} == {"d1"}
    loose = [answer for answer in answers if answer["sticky"] == "no"]
    # Round robin over three replicas: six non-sticky requests both hit and miss d1.
    assert {answer["held"] for answer in loose} == {"yes", "no"}
    assert all(answer["held"] == "yes" for answer in answers if answer["sticky"] == "yes")
    missed = page.locator("#lab-log li[data-held=no]").first.inner_text()
    assert "does not hold your socket (it is on d1)" in missed
    arrived_text = page.locator("#way3-arrived").inner_text()
    assert arrived_text == str(len(held))
    screenshot(page, "lab")


def test_sticky_buttons_name_one_replica_and_non_sticky_ones_spread(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    page = browser_user("bob", replica="d3", path="/lab/")
    page.wait_for_function("document.getElementById('ws-replica').textContent === 'd3'")
    page.fill("#lab-text", '<img src=x onerror="window.owned=1">')
    click(page, "way1-sticky", 5)
    click(page, "way1-nosticky", 6)
    sticky = wait_lines(page, "[data-kind=http][data-way='1'][data-sticky=yes]", 5)
    loose = wait_lines(page, "[data-kind=http][data-way='1'][data-sticky=no]", 6)
    assert {line["replica"] for line in sticky} == {"d3"}
    assert page.locator("#seen-way1-sticky").inner_text() == "d3\u00d75"  # "d3", times sign, 5
    assert len({line["replica"] for line in loose}) > 1
    # Markup typed into the box comes back as text.
    assert page.locator("#lab-log img").count() == 0
    assert page.evaluate("window.owned") is None
    assert "<img src=x" in page.locator("#lab-log li[data-way='1']").first.inner_text()
    # A non-sticky request did not re-pin the browser: the page still comes from d3.
    page.reload()
    assert page.locator("#page-replica").inner_text() == "d3"


def test_a_push_from_the_admin_action_appears_on_alices_lab_page(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    alice = browser_user("alice", replica="d2", path="/lab/")
    alice.wait_for_function("document.getElementById('ws-replica').textContent === 'd2'")
    admin = browser_user("admin", replica="d3", path="/admin/auth/user/")
    admin.locator("tr", has_text="alice").locator("input[name=_selected_action]").check()
    admin.select_option("select[name=action]", "send_message_to_users")
    admin.click("button[name=index]")
    admin.fill("textarea[name=text]", "<b>from the admin</b>")
    admin.click("input[name=apply]")
    admin.locator(".messagelist", has_text="Sent to 1 user").wait_for()
    line = alice.locator("#lab-log li[data-kind=push]", has_text="from the admin")
    line.wait_for()
    assert "<b>from the admin</b>" in line.inner_text()
    assert line.locator("b").count() == 0
