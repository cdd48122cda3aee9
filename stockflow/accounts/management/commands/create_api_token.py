from django.core.management.base import BaseCommand, CommandError

from stockflow.accounts import scopes
from stockflow.accounts.models import ApiToken


class Command(BaseCommand):
    help = "Create an API bearer token; prints the raw token (shown once) as the last line."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument(
            "--scopes",
            default=",".join(scopes.ALL),
            help=f"comma-separated, from: {', '.join(scopes.ALL)} (default: all)",
        )

    def handle(self, *args, name, scopes, **options):
        try:
            token, raw = ApiToken.issue(name, [s.strip() for s in scopes.split(",") if s.strip()])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Created token {token.name!r} (id {token.pk}, scopes {', '.join(token.scopes)}). "
            "It is shown only once:"
        )
        self.stdout.write(raw)
