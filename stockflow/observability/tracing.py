"""OpenTelemetry, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set: then Django, Celery and
psycopg are instrumented, spans go to the OTLP/HTTP endpoint, and log lines carry the
trace id. Nothing is imported when it is off, so it costs nothing."""

import os

_enabled = False


def enabled() -> bool:
    return _enabled


def init() -> bool:
    global _enabled
    if _enabled or not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return _enabled
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and the other standard OTEL_* variables are read by the SDK itself.
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "stockflow")})
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter())
    )  # re-initialised in forked children
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()
    PsycopgInstrumentor().instrument(enable_commenter=False)
    _enabled = True
    return True


def instrument_django() -> None:
    """Called by bootstrap("web") before Django builds its handler."""
    if _enabled:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument()


def add_trace_ids(logger, method_name, event_dict):
    """structlog processor (installed only when tracing is on)."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict
