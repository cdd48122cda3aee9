from django.core.management.base import BaseCommand

from api.core.models import ApiToken


class Command(BaseCommand):
    help = "Create an API bearer token; prints the raw token (shown once) as the last line."

    def add_arguments(self, parser):
        parser.add_argument("name")

    def handle(self, *args, name, **options):
        token, raw = ApiToken.issue(name)
        self.stdout.write(f"Created token {token.name!r} (id {token.pk}). It is shown only once:")
        self.stdout.write(raw)
