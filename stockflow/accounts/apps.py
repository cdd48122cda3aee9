from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """API tokens, scopes and the audit trail. The label stays "core": the tables, the
    migration history and the admin URLs of existing installations carry over."""

    name = "stockflow.accounts"
    label = "core"
