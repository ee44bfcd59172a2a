from django.conf import settings
from django.http import HttpRequest


def replica(request: HttpRequest) -> dict[str, str]:
    """Every page says, discreetly, which replica rendered it."""
    return {"replica_id": settings.REPLICA_ID}
