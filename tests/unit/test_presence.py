"""ConnectionPresence's own state: small per socket, and the ephemeral opt-in."""

from __future__ import annotations

from django.conf import settings

from realtime.presence import ConnectionPresence


def test_a_sockets_presence_has_no_dict_and_no_task_of_its_own() -> None:
    conn = ConnectionPresence(user_id=1, username="alice")
    assert not hasattr(conn, "__dict__")
    assert set(ConnectionPresence.__slots__) == {"conn", "streams", "user_id", "username", "wanted"}
    replica, _, random_part = conn.conn.rpartition("/")
    assert (conn.streams, replica, len(random_part), conn.wanted) == (
        set(),
        settings.REPLICA_ID,
        12,
        False,
    )


def test_only_sockets_that_ask_get_ephemeral_frames() -> None:
    assert ConnectionPresence(user_id=1, username="a", scope_query=b"x=1&ephemeral=1").wanted
    assert not ConnectionPresence(user_id=1, username="a", scope_query=b"ephemeral=10").wanted
