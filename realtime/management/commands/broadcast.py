from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime import publish
from realtime.management.commands._publishing import add_payload_arguments, payload_from, report


class Command(BaseCommand):
    help = "Broadcast a message to every connected socket on every replica."

    def add_arguments(self, parser: CommandParser) -> None:
        add_payload_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        payload = payload_from(options)
        try:
            result = publish.broadcast_sync(payload=payload)
        except publish.RealtimeUnavailable as exc:
            raise CommandError(str(exc)) from None
        report(self, result)
