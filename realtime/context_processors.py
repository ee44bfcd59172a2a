from django.conf import settings
from django.http import HttpRequest


def replica(request: HttpRequest) -> dict[str, str]:
    """Every page says, discreetly, which replica rendered it."""
    return {"replica_id": settings.REPLICA_ID}


def demo_logins(request: HttpRequest) -> dict[str, bool]:
    """Whether the login page lists the demo users' passwords (SHOW_DEMO_LOGINS: development)."""
    return {"show_demo_logins": settings.SHOW_DEMO_LOGINS}
