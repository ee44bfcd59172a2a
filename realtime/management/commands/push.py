from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime import publish
from realtime.management.commands._publishing import add_payload_arguments, payload_from, report
from realtime.selectors import user_get_by_username


class Command(BaseCommand):
    help = "Push a message to every open socket of one user, on whichever replica it lives."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="The username to push to.")
        add_payload_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        payload = payload_from(options)
        user = user_get_by_username(username=options["user"])
        if user is None:
            raise CommandError(f"There is no active user {options['user']!r}.")
        try:
            result = publish.push_to_user_sync(user_id=user.pk, payload=payload)
        except publish.RealtimeUnavailable as exc:
            raise CommandError(str(exc)) from None
        report(self, result)
