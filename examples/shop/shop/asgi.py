"""ASGI config for shop: Django's views, and Switchboard's WebSockets (/ws/) and SSE (/sse/)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

from realtime.asgi import switchboard_application

application = switchboard_application()
