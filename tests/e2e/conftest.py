"""Headless Chromium (Debian's) driven by Playwright on the real pages through HAProxy.

`playwright install` cannot download browsers here, so the fixture launches the system
Chromium by its path. E2E tests are plain (sync) functions: Playwright's sync API refuses to run
inside an asyncio loop.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from realtime.cluster import Cluster
from tests.conftest import BASE_DIR, require_binaries

# Written by every e2e run; the best ones are copied into docs/ by hand.
SCREENSHOTS_DIR = BASE_DIR / "test-artifacts" / "screenshots"
DEMO_PASSWORDS = {"alice": "alice-pass", "bob": "bob-pass", "carol": "carol-pass", "admin": "admin-pass"}
# Flags for a sandbox with no network but loopback: without the background-networking ones
# Chromium keeps dialling Google's hosts and logs refused connections.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    require_binaries("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield browser
        finally:
            browser.close()


LoginPage = Callable[..., Any]


@pytest.fixture
def browser_user(chromium: Any, healthy_cluster: Cluster) -> Iterator[LoginPage]:
    """`browser_user("alice", replica="d1")`: a new browser context logged in as alice, pinned
    by HAProxy's SERVERID cookie to `replica` when given; returns its page. Closed after the test."""
    contexts: list[Any] = []

    def open_page(username: str, *, replica: str | None = None, path: str = "/") -> Any:
        context = chromium.new_context(base_url=healthy_cluster.url, viewport={"width": 1280, "height": 860})
        context.set_default_timeout(15_000)
        contexts.append(context)
        if replica is not None:
            context.add_cookies([{"name": "SERVERID", "value": replica, "url": healthy_cluster.url}])
        page = context.new_page()
        page.goto(f"/accounts/login/?next={path}")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", DEMO_PASSWORDS[username])
        page.click("button[type=submit]")
        page.wait_for_url(f"**{path}")
        return page

    try:
        yield open_page
    finally:
        for context in contexts:
            context.close()


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
