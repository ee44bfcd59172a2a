"""What the push and broadcast commands share: reading the payload, reporting the result."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime import protocol, publish


def add_payload_arguments(parser: CommandParser) -> None:
    parser.add_argument("text", nargs="?", help='Sent as {"text": TEXT}.')
    parser.add_argument("--json", dest="json_payload", help="Send this JSON value instead.")


def payload_from(options: dict[str, Any]) -> Any:
    if options["json_payload"] is not None:
        if options["text"] is not None:
            raise CommandError("Give either TEXT or --json, not both.")
        try:
            payload = protocol.loads(options["json_payload"])
        except protocol.InvalidJson as exc:
            raise CommandError(f"--json is not valid JSON: {exc}") from None
    elif options["text"] is not None:
        payload = {"text": options["text"]}
    else:
        raise CommandError('Say what to send: TEXT, or --json \'{"any": "json"}\'.')
    try:
        publish.check_payload(payload)
    except publish.InvalidPayload as exc:
        raise CommandError(str(exc)) from None
    return payload


def report(command: BaseCommand, result: publish.PublishResult) -> None:
    command.stdout.write(json.dumps({"ok": True, **result.as_dict()}))
