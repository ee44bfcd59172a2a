from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_POST

from orders.models import Order
from realtime.sending import publish_on_commit


@require_POST
@staff_member_required
def ship_order(request: HttpRequest, order_id: int) -> JsonResponse:
    order = get_object_or_404(Order, pk=order_id)
    order.status = "shipped"
    order.save(update_fields=["status"])
    # Sent once the transaction commits: a watcher never hears of a change that rolled back.
    publish_on_commit(f"order:{order.pk}", {"status": order.status})
    return JsonResponse({"order": order.pk, "status": order.status})
