"""Under Daphne every HTTP request passes the whole MIDDLEWARE list: none may cost a thread hop."""

from __future__ import annotations

import logging

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.test import override_settings

pytestmark = pytest.mark.unit


def test_no_middleware_is_wrapped_in_sync_to_async_under_asgi(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Django says which handlers it adapted only with DEBUG on; a sync-only middleware (say, a
    # version of axes' that lost async support) would be run in a thread on every request.
    with override_settings(DEBUG=True), caplog.at_level(logging.DEBUG, logger="django.request"):
        ASGIHandler()
    adapted = [r.getMessage() for r in caplog.records if "adapted" in r.getMessage()]
    assert adapted == []
