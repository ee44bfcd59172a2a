from django.apps import AppConfig


class OrdersConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "orders"

    def ready(self) -> None:
        from orders.realtime import can_watch_order
        from realtime import streams

        # order:<id>: read by its owner and staff (checked on subscribe, resume and recheck);
        # sockets may not publish to it (no can_publish), the server does.
        streams.register("order", key=r"[0-9]{1,18}", can_read=can_watch_order)
