from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from realtime.models import Room

# Development passwords, printed by `make run`. Never use these users outside a dev machine.
DEMO_USERS = [
    ("alice", "alice-pass", False),
    ("bob", "bob-pass", False),
    ("carol", "carol-pass", False),
    ("admin", "admin-pass", True),
]


# A public room everyone can join and a private one for the demo users alice and bob, so a
# fresh cluster has somewhere to chat.
DEMO_ROOMS = [
    ("lobby", "Lobby", False, ()),
    ("alice-and-bob", "Alice & Bob", True, ("alice", "bob")),
]


class Command(BaseCommand):
    help = (
        "Create (or reset) the demo users alice, bob, carol and admin with their dev passwords, "
        "and the demo rooms."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        for username, password, is_admin in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            if user is None:
                User.objects.create_user(
                    username, password=password, is_staff=is_admin, is_superuser=is_admin
                )
            elif not (
                user.check_password(password) and user.is_active
                and user.is_staff == user.is_superuser == is_admin
            ):  # fmt: skip
                # Reset only what differs: a new password hash would log the user out of every
                # session and socket (realtime/access.py), on every `make run`.
                user.set_password(password)
                user.is_staff = user.is_superuser = is_admin
                user.is_active = True
                user.save()
            role = "admin, staff" if is_admin else "user"
            self.stdout.write(f"  {username:<6} / {password:<11} ({role})")
        for slug, title, is_private, members in DEMO_ROOMS:
            room, _ = Room.objects.get_or_create(
                slug=slug, defaults={"title": title, "is_private": is_private}
            )
            room.members.add(*User.objects.filter(username__in=members))
        self.stdout.write("Demo rooms: " + ", ".join(f"#{slug}" for slug, *_ in DEMO_ROOMS))
