import json
from typing import Any

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction


class Command(BaseCommand):
    help = (
        "For load tests and benchmarks: create COUNT users named PREFIX0.. with a logged-in "
        "session each (no password hashing, so thousands take seconds) and print "
        '{"username": "session key", …} as JSON.'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--prefix", default="load")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        sessions = {}
        for index in range(options["count"]):
            user, created = User.objects.get_or_create(username=f"{options['prefix']}{index}")
            if created:
                user.set_unusable_password()
                user.save(update_fields=["password"])
            store = SessionStore()
            store[SESSION_KEY] = str(user.pk)
            store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
            store[HASH_SESSION_KEY] = user.get_session_auth_hash()
            store.create()
            sessions[user.username] = store.session_key
        self.stdout.write(json.dumps(sessions))
