"""OpenTelemetry, when OTEL_EXPORTER_OTLP_ENDPOINT is set: the web request, the Celery task
and the SQL it runs share one trace, exported over OTLP/HTTP; log lines carry the trace id."""

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from harness.processes import free_port as _free_port
from stockflow.accounts.models import ApiToken
from tests.api_helpers import ok, product, receive, sale, wait_for_job
from tests.conftest import WebProcess


class OtlpReceiver:
    """Accepts POST /v1/traces (protobuf) and keeps the spans."""

    def __init__(self):
        self.spans: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    service = next(
                        a.value.string_value
                        for a in resource.resource.attributes
                        if a.key == "service.name"
                    )
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            receiver.spans.append(
                                {
                                    "service": service,
                                    "name": span.name,
                                    "trace_id": span.trace_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                }
                            )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", _free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def otlp():
    receiver = OtlpReceiver()
    yield receiver
    receiver.server.shutdown()


def test_web_task_and_sql_share_one_trace_and_logs_carry_it(tmp_path, client, worker_factory, otlp):
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    worker = worker_factory(OTEL_SERVICE_NAME="stockflow-worker", **otel)
    web = WebProcess(tmp_path, "otel", OTEL_SERVICE_NAME="stockflow-web", **otel)
    try:
        product(client, "OTEL")
        receive(client, "OTEL", "L1", 5, 30)
        s = sale(client, "S-OTEL", [("OTEL", 1)])
        _, raw = ApiToken.issue("otel")
        response = httpx.post(
            f"{web.url}/api/sales/{s['id']}/transition",
            json={"to_status": "paid"},
            headers={"Authorization": f"Bearer {raw}"},
            timeout=10,
        )
        job = ok(response, 202)["job"]
        assert wait_for_job(client, job["id"])["status"] == "succeeded"

        def web_root_span():
            return [
                sp
                for sp in otlp.spans
                if sp["service"] == "stockflow-web" and sp["name"].startswith("POST")
            ]

        deadline = time.time() + 15
        while time.time() < deadline:
            task_spans = [
                sp
                for sp in otlp.spans
                if sp["service"] == "stockflow-worker" and "run_job" in sp["name"]
            ]
            if task_spans and web_root_span():
                break
            time.sleep(0.2)
        assert task_spans, otlp.spans
        trace_id = task_spans[0]["trace_id"]
        in_trace = [sp for sp in otlp.spans if sp["trace_id"] == trace_id]
        services = {sp["service"] for sp in in_trace}
        assert services == {"stockflow-web", "stockflow-worker"}, in_trace
        roots = [sp for sp in web_root_span() if sp["trace_id"] == trace_id]
        assert roots and "transition" in roots[0]["name"], otlp.spans
        # psycopg spans of the job's SQL, in the worker, in the same trace
        assert (
            sum(
                1
                for sp in in_trace
                if sp["service"] == "stockflow-worker" and sp["name"] != task_spans[0]["name"]
            )
            >= 3
        )

        lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
        consumed = [line for line in lines if line.get("event") == "sale.paid.stock_consumed"]
        assert consumed and consumed[0]["trace_id"] == trace_id
    finally:
        web.stop()


def test_tracing_is_off_and_not_imported_without_the_endpoint():
    import sys

    from stockflow.observability import tracing

    assert not tracing.enabled()
    assert "opentelemetry.instrumentation.django" not in sys.modules
