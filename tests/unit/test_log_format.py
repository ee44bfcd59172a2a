"""LOG_FORMAT=json: a log pipeline gets one JSON object a line, with the key=value pairs of
Switchboard's messages as fields of their own."""

from __future__ import annotations

import json
import logging

import pytest

from realtime.log_format import JsonLines

pytestmark = pytest.mark.unit


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("realtime.views", logging.INFO, __file__, 1, message, args, exc_info)


def test_a_publish_line_becomes_fields_numbers_as_numbers() -> None:
    line = JsonLines(replica="d2").format(
        record("publish stream=%s seq=%s by=%s", "user:42", 17, "token:svc")
    )
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["replica"] == "d2" and entry["level"] == "INFO"
    assert entry["logger"] == "realtime.views" and entry["ts"].endswith("+00:00")
    assert (entry["stream"], entry["seq"], entry["by"]) == ("user:42", 17, "token:svc")
    assert entry["msg"] == "publish stream=user:42 seq=17 by=token:svc"


def test_a_pair_never_overwrites_the_base_fields_and_exceptions_are_kept() -> None:
    entry = json.loads(
        JsonLines(replica="d1").format(
            record('connected replica=evil level=DEBUG user="a b"\nnext', exc=True)
        )
    )
    assert (entry["replica"], entry["level"]) == ("d1", "INFO")
    assert entry["user"] == "a b"
    assert "RuntimeError: boom" in entry["exc"]
