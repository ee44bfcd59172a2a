from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime import groups, publish
from realtime.management.commands._publishing import add_payload_arguments, payload_from, report


class Command(BaseCommand):
    help = (
        "Publish a message to any stream (user:<id>, room:<slug>, broadcast) and print its "
        "seq and how many sockets it reached. With --idempotency-key a retried run publishes once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stream",
            required=True,
            help="user:<id>, broadcast, room:<slug> or a registered kind's <kind>:<key>.",
        )
        parser.add_argument(
            "--idempotency-key",
            help="Your unique id for this message: running again with it publishes nothing new.",
        )
        add_payload_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        payload = payload_from(options)
        try:
            groups.group_for_stream(options["stream"])
        except groups.InvalidStreamName as exc:
            raise CommandError(str(exc)) from None
        key = options["idempotency_key"]
        try:
            result = publish.publish_sync(
                stream=options["stream"],
                payload=payload,
                idempotency=publish.idempotency_key("cli", key) if key else None,
            )
        except publish.RealtimeUnavailable as exc:
            raise CommandError(str(exc)) from None
        report(self, result)
