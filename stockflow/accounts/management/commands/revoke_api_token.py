from django.core.management.base import BaseCommand, CommandError

from stockflow.accounts.models import ApiToken


class Command(BaseCommand):
    help = "Revoke API tokens by name or id; they answer 401 from then on."

    def add_arguments(self, parser):
        parser.add_argument("name_or_id")

    def handle(self, *args, name_or_id, **options):
        tokens = ApiToken.objects.active().filter(name=name_or_id)
        if name_or_id.isdigit():
            tokens = tokens | ApiToken.objects.active().filter(pk=int(name_or_id))
        revoked = tokens.revoke()
        if not revoked:
            raise CommandError(f"no active token named or numbered {name_or_id!r}")
        self.stdout.write(f"revoked {revoked} token(s)")
