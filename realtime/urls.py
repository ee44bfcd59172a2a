"""Switchboard's HTTP endpoints, for a project's URL conf: `path("", include("realtime.urls"))`.

At the site's root: the clients, HAProxy's health checks and the publish API's lane
(realtime/publish_lane.py) know these paths. The WebSocket (`/ws/`) and the SSE stream
(`GET /sse/`) are routed before Django, by realtime/asgi.py.
"""

from django.urls import path

from realtime import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("drain", views.drain_view, name="drain"),
    path("metrics", views.metrics_view, name="metrics"),
    path("api/whoami", views.whoami, name="whoami"),
    # The SSE transport's client frames.
    path("sse/send", views.sse_send, name="sse-send"),
    path("api/push", views.api_push, name="api-push"),
    path("api/push/batch", views.api_push_batch, name="api-push-batch"),
    path("api/broadcast", views.api_broadcast, name="api-broadcast"),
    path("api/publish", views.api_publish, name="api-publish"),
    path("api/connect-token", views.api_connect_token, name="api-connect-token"),
    path("api/kick", views.api_kick, name="api-kick"),
    path("api/unsubscribe", views.api_unsubscribe, name="api-unsubscribe"),
    path("api/history", views.api_history, name="api-history"),
    path("api/presence", views.api_presence, name="api-presence"),
    path("api/sockets", views.api_sockets, name="api-sockets"),
]
