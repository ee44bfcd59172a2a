"""The ASGI callable's types, in one place: every app, middleware and test double here uses them.

Scopes and messages are plain mappings, as Starlette's are, not asgiref's TypedDicts
(`asgiref.typing`): those name only the spec's keys, and our scopes carry more (`user`,
`session_key`, `url_route`). Scope is a dict and Message a Mapping because that is what Django's
ASGIHandler takes (django-stubs), so Django's app is an `ASGIApp` as it stands.

Channels' stubs type its apps (ProtocolTypeRouter, a consumer's `as_asgi()`) with asgiref's
TypedDicts; where one of them meets one of ours, a `cast` at that one place says so.
"""

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

Scope: TypeAlias = dict[str, Any]
Message: TypeAlias = Mapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
