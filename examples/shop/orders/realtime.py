"""Who may watch an order's stream `order:<id>`: its owner, and staff."""

from typing import Any

from orders.models import Order


def can_watch_order(user: Any, stream: str) -> bool:
    order_id = int(stream.partition(":")[2])
    return user.is_staff or Order.objects.filter(pk=order_id, owner_id=user.pk).exists()
