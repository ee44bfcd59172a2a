"""Sockets that come and go on a real replica leave nothing alive there.

60 sockets opened and closed on d1 through HAProxy, half without a close handshake (the TCP
connection dropped, as a phone losing signal does): afterwards every per-socket object that
the replica counts (realtime/lifetimes.py: the socket port's connection, or Daphne's protocol
without one, our consumer, session, inbound half and writer) is back to its number before, and
so are its open connections. Counted objects, not RSS, so the allocator cannot fool it; RSS per
socket is `manage.py bench`'s W5."""

from __future__ import annotations

import asyncio
from typing import Any

from devtools.cluster import Cluster, wait_until
from tests.cluster.helpers import sessions_for, socket_for

REPLICA = "d1"
PER_SOCKET = ("RealtimeConsumer", "Session", "Inbound", "DaphneWriter")


def per_socket(cluster: Cluster) -> tuple[str, ...]:
    """The kinds each socket makes: with the protocol object of the server that holds it."""
    protocol = "SocketPortConnection" if cluster.socket_binds else "LeanWebSocketProtocol"
    return (*PER_SOCKET, protocol)


def settled(health: dict[str, Any], kinds: tuple[str, ...]) -> bool:
    """Every counted object belongs to an open socket (none of a closed one is still around)."""
    live = health["live_objects"]
    return all(live[kind] == health["connections"] for kind in kinds)


async def test_sockets_opened_and_dropped_leave_no_object_alive_on_their_replica(
    cluster: Cluster,
) -> None:
    keys = list(sessions_for(cluster, 3, "churn-objects").values())
    kinds = per_socket(cluster)
    witness = await socket_for(cluster, keys[0], replica=REPLICA)

    def health() -> dict[str, Any]:
        return cluster.replica_health(REPLICA)

    await asyncio.to_thread(
        wait_until, lambda: settled(health(), kinds), timeout=20, what=f"{REPLICA} settled"
    )
    before = health()
    for _ in range(3):
        sockets = [await socket_for(cluster, keys[n % 3], replica=REPLICA) for n in range(20)]
        opened = health()
        assert opened["connections"] == before["connections"] + 20
        assert opened["live_objects"]["Session"] == before["live_objects"]["Session"] + 20
        for n, socket in enumerate(sockets):
            if n % 2:
                await socket.close()
            else:
                socket.connection.transport.abort()  # no close frame, no FIN handshake
                await socket.wait_closed()

    def back() -> bool:
        now = health()
        return now["connections"] == before["connections"] and settled(now, kinds)

    await asyncio.to_thread(wait_until, back, timeout=30, what=f"{REPLICA}'s objects freed")
    after = health()
    # (Inbox, an application's input queue, also counts HTTP requests such as this /healthz.)
    assert {kind: after["live_objects"][kind] for kind in kinds} == {
        kind: before["live_objects"][kind] for kind in kinds
    }
    await witness.close()
