"""The Content-Security-Policy: on every page, and satisfied by every template and script.

A page that broke the policy would break silently in the browser (a blocked script), so the
templates are read here for what the policy forbids; the e2e tier runs the real pages under it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import django
import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from realtime.middleware import INLINE_SCRIPT_HASHES
from tests.conftest import BASE_DIR

DJANGO_DIR = Path(django.__file__).parent
# The project's templates and each app's own (the realtime and chat admin pages ship with them).
TEMPLATE_DIRS = [
    BASE_DIR / "templates",
    BASE_DIR / "realtime" / "templates",
    BASE_DIR / "chat" / "templates",
    DJANGO_DIR / "contrib" / "admin" / "templates",
    DJANGO_DIR / "forms" / "templates",
]
SCRIPT = re.compile(r"<script(?P<attrs>\s[^>]*)?>(?P<body>.*?)</script>", re.S | re.I)
# What 'unsafe-inline' would be needed for: event handler and style attributes, javascript: URLs.
INLINE_ATTRIBUTE = re.compile(r"""\s(on[a-z]+|style)\s*=\s*["']|javascript:""", re.I)
# What 'unsafe-inline' or 'unsafe-eval' would be needed for in a script.
SCRIPT_NEEDING_UNSAFE = re.compile(
    r"""setAttribute\(\s*["'](style|on[a-z]+)["']|\beval\(|new Function\("""
)


def templates() -> list[Path]:
    return [path for folder in TEMPLATE_DIRS for path in sorted(folder.rglob("*.html"))]


def sha256_source(body: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"


def test_every_inline_script_in_the_templates_is_allowed_by_its_hash() -> None:
    inline = []
    for path in templates():
        for match in SCRIPT.finditer(path.read_text()):
            attrs = match["attrs"] or ""
            # With src, the body is ignored; a JSON data block (json_script) is never run.
            if "src=" in attrs or "application/json" in attrs:
                continue
            inline.append((path, sha256_source(match["body"])))
    assert inline, "the presence page's inline script was expected"
    for path, source in inline:
        assert "{%" not in source and "{{" not in source
        assert source in INLINE_SCRIPT_HASHES, (
            f"{path} has an inline script the CSP blocks: move it to static/realtime/, or add "
            f"{source} to INLINE_SCRIPT_HASHES in realtime/middleware.py"
        )


def test_no_template_or_script_needs_inline_handlers_or_style_attributes() -> None:
    offenders = [
        f"{path}: {match.group(0).strip()}"
        for path in templates()
        for match in INLINE_ATTRIBUTE.finditer(path.read_text())
    ]
    scripts = [
        *(BASE_DIR / "static").rglob("*.js"),
        *(BASE_DIR / "realtime" / "static").rglob("*.js"),
    ]
    for path in sorted(scripts):
        offenders += [
            f"{path}: {m.group(0)}" for m in SCRIPT_NEEDING_UNSAFE.finditer(path.read_text())
        ]
    assert offenders == []


@pytest.mark.django_db
def test_pages_carry_the_policy_with_their_own_websocket_origin() -> None:
    plain = Client().get("/accounts/login/")
    assert plain.status_code == 200
    policy = plain.headers["Content-Security-Policy"]
    assert "script-src 'self' 'sha256-" in policy and "'unsafe-inline'" not in policy
    assert "style-src 'self';" in policy and "frame-ancestors 'none'" in policy
    assert policy.endswith("connect-src 'self' ws://testserver")

    secure = Client().get("/accounts/login/", secure=True)
    assert secure.headers["Content-Security-Policy"].endswith("connect-src 'self' wss://testserver")


@pytest.mark.django_db
def test_debug_error_pages_go_without_the_policy_they_could_not_meet(
    settings: Settings,
) -> None:
    assert "Content-Security-Policy" in Client().get("/no-such-page/").headers
    settings.DEBUG = True  # the middleware reads DEBUG when it is built, per request handler
    assert "Content-Security-Policy" not in Client().get("/no-such-page/").headers
