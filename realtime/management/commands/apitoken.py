from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.models import ApiToken
from realtime.services import api_token_issue


class Command(BaseCommand):
    help = "Manage API tokens: create NAME (prints the secret once), list, revoke NAME."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("create", help="Issue a token and print its secret.").add_argument("name")
        sub.add_parser("list", help="List tokens (never their secrets).")
        sub.add_parser("revoke", help="Deactivate a token.").add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            if ApiToken.objects.filter(name=options["name"]).exists():
                raise CommandError(f"A token named {options['name']!r} exists; pick another name.")
            _, raw = api_token_issue(name=options["name"])
            self.stdout.write(raw)
        elif action == "list":
            for token in ApiToken.objects.all():
                state = "active" if token.is_active else "revoked"
                self.stdout.write(
                    f"{token.name}\t{token.prefix}…\t{state}\t{token.created_at:%Y-%m-%d}"
                )
        else:
            updated = ApiToken.objects.filter(name=options["name"]).update(is_active=False)
            if not updated:
                raise CommandError(f"There is no token named {options['name']!r}.")
            self.stdout.write(f"Revoked {options['name']}.")
