from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import check_password
from django.core.management.base import BaseCommand

from chat.models import Room

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
        "Create the demo users alice, bob, carol and admin with their dev passwords, and the demo "
        "rooms, where they are missing. An existing user or room is never changed: its password, "
        "role, active flag and members stay as they are."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        for username, password, is_admin in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            if user is None:
                User.objects.create_user(
                    username, password=password, is_staff=is_admin, is_superuser=is_admin
                )
                role = "admin, staff" if is_admin else "user"
                self.stdout.write(f"  {username:<6} / {password:<11} ({role}, created)")
                continue
            # A user of that name may be a real account (a deployment's `admin`): resetting its
            # password, role or active flag would hand it to anyone who has read this file.
            # check_password without a setter: the stored hash is never rewritten.
            if check_password(password, user.password):
                self.stdout.write(f"  {username:<6} / {password:<11} (exists, left as it is)")
            else:
                self.stdout.write(
                    f"  {username:<6} exists with a password of its own; left as it is"
                )
        created: list[str] = []
        kept: list[str] = []
        for slug, title, is_private, members in DEMO_ROOMS:
            room, is_new = Room.objects.get_or_create(
                slug=slug, defaults={"title": title, "is_private": is_private}
            )
            if is_new:
                room.members.add(*User.objects.filter(username__in=members))
            (created if is_new else kept).append(f"#{slug}")
        if created:
            self.stdout.write("Demo rooms created: " + ", ".join(created))
        if kept:
            self.stdout.write("Demo rooms that exist, left as they are: " + ", ".join(kept))
