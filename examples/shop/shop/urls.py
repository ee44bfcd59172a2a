from django.contrib import admin
from django.urls import include, path
from orders import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("orders/<int:order_id>/ship", views.ship_order, name="ship-order"),
    # Switchboard: /api/* (publish, connect tokens, the server API), /sse/send, /healthz.
    path("", include("realtime.urls")),
]
