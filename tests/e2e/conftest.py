"""Headless Chromium (Debian's) driven by Playwright on the real pages through HAProxy.

`playwright install` cannot download browsers here, so the fixture launches the system
Chromium by its path. E2E tests are plain (sync) functions: Playwright's sync API refuses to run
inside an asyncio loop.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from devtools.cluster import Cluster
from tests.conftest import BASE_DIR, require_binaries

# Written by every e2e run; the best ones are copied into docs/ by hand.
SCREENSHOTS_DIR = BASE_DIR / "test-artifacts" / "screenshots"
DEFAULT_TIMEOUT_MS = 15_000
DEMO_PASSWORDS = {
    "alice": "alice-pass",
    "bob": "bob-pass",
    "carol": "carol-pass",
    "admin": "admin-pass",
}
# Flags for a sandbox with no network but loopback: without the background-networking ones
# Chromium keeps dialling Google's hosts and logs refused connections.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    require_binaries("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, pytest.MonkeyPatch.context() as patch:
        patch.setattr(Page, "wait_for_function", wait_for_function_polled_from_here)
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield browser
        finally:
            browser.close()


def wait_for_function_polled_from_here(
    page: Any, expression: str, *, arg: Any = None, timeout: float | None = None, **_: Any
) -> Any:
    """Page.wait_for_function, polling from the test instead of inside the page.

    The pages' Content-Security-Policy has no 'unsafe-eval', and Playwright's own polling calls
    eval() in the page on every try after the first: the page refuses it (EvalError). A call
    from here (page.evaluate) is the browser's debugger evaluating, which the CSP allows."""
    deadline = time.monotonic() + (timeout if timeout is not None else DEFAULT_TIMEOUT_MS) / 1000
    while True:
        try:
            result = page.evaluate(expression, arg)
        except PlaywrightError as exc:
            if "context was destroyed" not in str(exc):  # a navigation: try again on the new page
                raise
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise PlaywrightTimeoutError(f"not true within {timeout} ms: {expression}")
        page.wait_for_timeout(50)


LoginPage = Callable[..., Any]


@pytest.fixture
def browser_user(chromium: Any, healthy_cluster: Cluster) -> Iterator[LoginPage]:
    """`browser_user("alice", replica="d1")`: a new browser context logged in as alice, pinned
    by HAProxy's SERVERID cookie to `replica` when given; returns its page. Closed after the
    test."""
    contexts: list[Any] = []
    # Chromium logs whatever the Content-Security-Policy blocks (a script, a style, a socket).
    blocked: list[str] = []

    def open_page(username: str, *, replica: str | None = None, path: str = "/") -> Any:
        context = chromium.new_context(
            base_url=healthy_cluster.url, viewport={"width": 1280, "height": 860}
        )
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        context.on(
            "console",
            lambda message: (
                blocked.append(f"{message.page and message.page.url}: {message.text}")
                if "Content Security Policy" in message.text
                else None
            ),
        )
        contexts.append(context)
        if replica is not None:
            context.add_cookies(
                [{"name": "SERVERID", "value": replica, "url": healthy_cluster.url}]
            )
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
    assert blocked == [], "the Content-Security-Policy blocked something on a page"


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
