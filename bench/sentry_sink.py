"""A local stand-in for Sentry's ingest endpoint (and an OTLP/HTTP collector), so
"observability on" runs the real SDKs (DSN set, integrations installed, events and spans
sent) without leaving the machine. Answers 200 to every POST and counts them."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SentrySink:
    def __init__(self):
        self.requests = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def dsn(self) -> str:
        return f"http://benchpublickey@127.0.0.1:{self.server.server_address[1]}/1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
