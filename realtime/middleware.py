"""Every HTTP response names the replica that produced it, so stickiness can be seen and tested."""

from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse


def replica_header_middleware(
    get_response: Callable[[HttpRequest], Awaitable[HttpResponse]],
) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
    # Async-only: a sync middleware would cost a thread hop on every request under Daphne.
    replica_id = settings.REPLICA_ID

    async def middleware(request: HttpRequest) -> HttpResponse:
        response = await get_response(request)
        response["X-Replica"] = replica_id
        return response

    markcoroutinefunction(middleware)
    return middleware


replica_header_middleware.async_capable = True  # type: ignore[attr-defined]
replica_header_middleware.sync_capable = False  # type: ignore[attr-defined]
