"""The ops stream's pure parts: HAProxy's CSV as the cluster view reads it, and who may read it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ops.reports import display_status, parse_haproxy_csv
from realtime import groups
from realtime.selectors import StreamDenied, stream_check_readable, stream_check_writable

# Trimmed from a real `show stat` (columns kept in HAProxy's order; the parser goes by name).
CSV = """# pxname,svname,qcur,scur,status,check_status,
switchboard,FRONTEND,,4,OPEN,,
replicas,d1,0,2,UP,L7OK,
replicas,d2,0,0,DRAIN,L7OK,
replicas,d3,0,0,DOWN,L4CON,
replicas,d4,0,1,UP 1/2,L7STS,
replicas,d5,0,0,MAINT,,
replicas,BACKEND,0,3,UP,,
replicas_nosticky,d1,0,0,UP,,
stats,FRONTEND,,1,OPEN,,
"""


def test_haproxy_csv_gives_each_replica_of_the_main_backend_as_an_operator_reads_it() -> None:
    assert parse_haproxy_csv(CSV) == {
        "d1": {"status": "UP", "check": "L7OK", "sessions": 2},
        "d2": {"status": "draining", "check": "L7OK", "sessions": 0},
        "d3": {"status": "DOWN", "check": "L4CON", "sessions": 0},
        "d4": {"status": "UP 1/2", "check": "L7STS", "sessions": 1},
        "d5": {"status": "maint", "check": "", "sessions": 0},
    }


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("UP", "UP"),
        ("DRAIN", "draining"),
        ("NOLB", "draining"),
        ("MAINT (via x)", "maint"),
        ("DOWN 1/2", "DOWN 1/2"),
        ("", "unknown"),
    ],
)
def test_display_status(raw: str, shown: str) -> None:
    assert display_status(raw) == shown


def user(*, staff: bool) -> Any:
    return SimpleNamespace(pk=7, is_staff=staff)


def test_ops_is_a_stream_of_its_own_group() -> None:
    assert groups.group_for_stream(groups.OPS_STREAM) == groups.OPS_GROUP == "ops"


def test_only_staff_may_read_the_ops_stream() -> None:
    stream_check_readable(user=user(staff=True), stream="ops")
    with pytest.raises(StreamDenied) as denied:
        stream_check_readable(user=user(staff=False), stream="ops")
    assert denied.value.code == "forbidden_stream"


def test_nobody_publishes_to_the_ops_stream_from_a_socket() -> None:
    for staff in (True, False):
        with pytest.raises(StreamDenied):
            stream_check_writable(user=user(staff=staff), stream="ops")
