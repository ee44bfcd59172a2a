from django.urls import path

from realtime.consumers import RealtimeConsumer

websocket_urlpatterns = [
    # Channels routes consumers with Django's path(), which django-stubs types for views only.
    path("ws/", RealtimeConsumer.as_asgi()),  # type: ignore[arg-type]
]
# The same consumer over Server-Sent Events, for networks that block WebSockets: GET opens the
# stream here; the client's frames go to the Django view at POST /sse/send (realtime/views.py).
event_stream_urlpatterns = [
    path("sse/", RealtimeConsumer.as_asgi()),  # type: ignore[arg-type]
]
