"""The ASGI entry point Daphne serves: HTTP through Django, WebSockets through Channels."""

import os
from typing import cast

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Build the Django app first: it sets Django up, and the consumers below import models,
# which would fail with AppRegistryNotReady if imported earlier.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from ops.reports import with_ops_publisher  # noqa: E402
from realtime.asgi_types import ASGIApp  # noqa: E402
from realtime.publish_lane import PublishLane  # noqa: E402
from realtime.routing import event_stream_urlpatterns, websocket_urlpatterns  # noqa: E402
from realtime.socket_auth import EventStreams, SocketAuthMiddleware  # noqa: E402

router = ProtocolTypeRouter(
    {
        # Static files are served by the replica itself so a local cluster needs no extra web
        # server; only paths under STATIC_URL take this detour. Publish requests with an API
        # token skip Django's request cycle (realtime/publish_lane.py). GET /sse/ is the SSE
        # transport's stream, served by the same consumer as /ws/.
        "http": EventStreams(
            SocketAuthMiddleware(event_stream_urlpatterns),
            PublishLane(ASGIStaticFilesHandler(django_asgi_app)),
        ),
        # Browsers send Origin on every WebSocket handshake; one that is not ours is refused, so
        # another site cannot open a socket with the user's cookies. One middleware checks it,
        # logs the session's user in and routes: Channels' stack of five kept a frame and a
        # scope copy each for the life of every socket (realtime/socket_auth.py).
        "websocket": SocketAuthMiddleware(websocket_urlpatterns),
    }
)
# with_ops_publisher: the replica's stats reporter for the cluster view starts with the first
# request (Daphne sends no lifespan events). The cast: Channels' stubs type the router with
# asgiref's TypedDict scopes, ours are plain mappings (realtime/asgi_types.py says why).
application = with_ops_publisher(cast(ASGIApp, router))
