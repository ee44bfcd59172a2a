"""The ASGI application a project serves: one call in its asgi.py.

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from realtime.asgi import switchboard_application
    application = switchboard_application()

HTTP goes to Django (the publish API's token requests by a shorter lane, realtime/publish_lane.py,
and HAProxy's health checks by another, realtime/probe_lane.py), `GET /sse/` and WebSockets on
`/ws/` to Switchboard's consumer, each checked by one middleware (origin, session or connection
token; realtime/socket_auth.py).
"""

from __future__ import annotations

from typing import cast

from django.core.asgi import get_asgi_application

from realtime.asgi_types import ASGIApp


def switchboard_application(
    http_app: ASGIApp | None = None, *, serve_static: bool = False
) -> ASGIApp:
    """Route a project's traffic: `http_app` (default: Django's own ASGI app) for HTTP, and
    Switchboard's endpoints. `serve_static` has Django's app serve STATIC_URL from the replica
    itself (runserver's convenience, for a cluster with no web server in front)."""
    # Django is set up first: the consumer and the lane import models, which fail with
    # AppRegistryNotReady before.
    django_handler = get_asgi_application()

    from channels.routing import ProtocolTypeRouter
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    from realtime.probe_lane import ProbeLane
    from realtime.publish_lane import PublishLane
    from realtime.routing import event_stream_urlpatterns, websocket_urlpatterns
    from realtime.socket_auth import EventStreams, SocketAuthMiddleware

    if http_app is not None:
        django_app = http_app
    elif serve_static:
        django_app = cast(ASGIApp, ASGIStaticFilesHandler(django_handler))
    else:
        django_app = cast(ASGIApp, django_handler)
    router = ProtocolTypeRouter(
        {
            # GET /sse/ is the SSE transport's stream, served by the same consumer as /ws/.
            "http": EventStreams(
                SocketAuthMiddleware(event_stream_urlpatterns), ProbeLane(PublishLane(django_app))
            ),
            # Browsers send Origin on every WebSocket handshake; one that is not ours is refused,
            # so another site cannot open a socket with the user's cookies. One middleware checks
            # it, logs the user in (session or connection token) and routes: Channels' stack of
            # five kept a frame and a scope copy each for the life of every socket.
            "websocket": SocketAuthMiddleware(websocket_urlpatterns),
        }
    )
    # Channels' stubs type the router with asgiref's TypedDict scopes; ours are plain mappings
    # (realtime/asgi_types.py says why).
    return cast(ASGIApp, router)
