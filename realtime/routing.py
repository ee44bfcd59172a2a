from django.urls import path

from realtime.consumers import RealtimeConsumer

websocket_urlpatterns = [
    # Channels routes consumers with Django's path(), which django-stubs types for views only.
    path("ws/", RealtimeConsumer.as_asgi()),  # type: ignore[arg-type]
]
