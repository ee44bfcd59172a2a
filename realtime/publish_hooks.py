"""Apps that give some socket publishes a meaning of their own, without the core importing them.

The chat app, say: a `publish` of {"kind": "chat", "text"} to a room is a line to store before it
is published, and {"kind": "typing"} is an ephemeral frame with a budget of its own. The core
(delivery/inbound.py) asks the registered hooks, in order, and publishes the payload as it is
when none takes it. Hooks register in their app's `ready()`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol


class SocketPublishHook(Protocol):
    def is_ephemeral(self, stream: str, payload: Any) -> bool:
        """Frames that are stale within seconds (typing): their own, tighter socket budget."""
        ...

    def handle(
        self, *, user: Any, stream: str, payload: Any, client_id: str
    ) -> Awaitable[dict[str, Any] | None]:
        """Take the publish and return the ack frame to send, or None to leave it to others."""
        ...


_hooks: list[SocketPublishHook] = []


def register(hook: SocketPublishHook) -> None:
    if hook not in _hooks:
        _hooks.append(hook)


def is_ephemeral(stream: str, payload: Any) -> bool:
    return any(hook.is_ephemeral(stream, payload) for hook in _hooks)


async def handle(*, user: Any, stream: str, payload: Any, client_id: str) -> dict[str, Any] | None:
    for hook in _hooks:
        ack = await hook.handle(user=user, stream=stream, payload=payload, client_id=client_id)
        if ack is not None:
            return ack
    return None
