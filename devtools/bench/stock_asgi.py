"""The stock baseline's ASGI entry point (see devtools/bench/stock.py)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "devtools.bench.stock_settings")

# Django first: the consumer below imports models (AppRegistryNotReady otherwise).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from devtools.bench.stock import StockConsumer  # noqa: E402

# Channels routes consumers with Django's path(), which django-stubs types for views only.
routes = [path("ws/", StockConsumer.as_asgi())]  # type: ignore[arg-type]

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(routes))  # type: ignore[arg-type]
        ),
    }
)
