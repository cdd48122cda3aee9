from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "api.core"
    label = "core"

    def ready(self):
        from api.observability import tracing

        tracing.instrument_django()
