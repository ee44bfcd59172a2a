"""Headers on every HTTP response: the replica that produced it, so stickiness can be seen and
tested, and the Content-Security-Policy the pages are written for."""

from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse

# The pages load scripts, styles and images from this site only (/static/), and talk only to it:
# fetch() and their WebSocket. No inline event handlers or style attributes anywhere (nor in
# Django's admin). The one inline script is allowed by its hash: the admin presence page's few
# lines (chat/templates/admin/realtime/presence.html). tests/unit/test_csp.py fails, naming the hash
# to add here, when one is changed or added; moving it to a static file would need none.
INLINE_SCRIPT_HASHES = ("'sha256-AJ9OD6sUeXPEd71Ad40cDYJgLTVwD6x3xI6opmwq050='",)
CSP_DIRECTIVES = (
    "default-src 'self'",
    "script-src 'self' " + " ".join(INLINE_SCRIPT_HASHES),
    "style-src 'self'",
    "img-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)
CSP_HEAD = "; ".join(CSP_DIRECTIVES)


def content_security_policy(request: HttpRequest) -> str:
    """The policy for one response. connect-src names the page's own WebSocket origin: 'self'
    covers ws(s):// of the same host only in browsers that follow CSP 3 (Safari before 15.4
    does not), and `ws: wss:` would let a script send anywhere."""
    try:
        host = request.get_host()
    except DisallowedHost:  # already answered with 400; nothing on it connects anywhere
        return f"{CSP_HEAD}; connect-src 'self'"
    scheme = "wss" if request.is_secure() else "ws"
    return f"{CSP_HEAD}; connect-src 'self' {scheme}://{host}"


def replica_header_middleware(
    get_response: Callable[[HttpRequest], Awaitable[HttpResponse]],
) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
    # Async-only: a sync middleware would cost a thread hop on every request under Daphne.
    replica_id = settings.REPLICA_ID
    debug = settings.DEBUG

    async def middleware(request: HttpRequest) -> HttpResponse:
        response = await get_response(request)
        response["X-Replica"] = replica_id
        # With DEBUG on, Django's own 404 and 500 pages inline their styles and scripts.
        if not (debug and response.status_code >= 400):
            response.headers.setdefault("Content-Security-Policy", content_security_policy(request))
        return response

    markcoroutinefunction(middleware)
    return middleware


replica_header_middleware.async_capable = True  # type: ignore[attr-defined]
replica_header_middleware.sync_capable = False  # type: ignore[attr-defined]
