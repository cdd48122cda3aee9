"""A tiny local Sentry: accepts envelopes over HTTP the way sentry.io does, so tests
can run the real sentry-sdk transport and look at exactly what it would have sent.

    with SentryServer() as sentry:
        ...  # processes use SENTRY_DSN=sentry.dsn
        events = sentry.wait_for(lambda s: s.items("event"), timeout=10)

Only POST /api/<project>/envelope/ is served. Bodies may be gzip- or brotli-encoded
(Content-Encoding); each envelope is kept raw (decoded bytes) and parsed into items.
"""

import json
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:  # sentry-sdk prefers brotli when the module is importable
    import brotli
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None


@dataclass
class Item:
    headers: dict
    payload: bytes

    @property
    def type(self) -> str:
        return self.headers.get("type", "")

    def json(self):
        return json.loads(self.payload)


@dataclass
class Envelope:
    headers: dict
    items: list[Item]
    raw: bytes
    http_headers: dict = field(default_factory=dict)


def decode_body(body: bytes, encoding: str | None) -> bytes:
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        if brotli is None:
            raise ValueError("brotli-encoded envelope but the brotli module is not installed")
        return brotli.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def parse_envelope(data: bytes) -> Envelope:
    """Envelope = header line, then per item: header line, payload (`length` bytes if
    the item header says so, else up to the next newline)."""
    newline = data.find(b"\n")
    header_line, pos = (data, len(data)) if newline < 0 else (data[:newline], newline + 1)
    items = []
    while pos < len(data):
        newline = data.find(b"\n", pos)
        if newline < 0:
            newline = len(data)
        line = data[pos:newline]
        pos = newline + 1
        if not line.strip():
            continue
        item_headers = json.loads(line)
        length = item_headers.get("length")
        if length is not None:
            payload = data[pos : pos + length]
            pos += length
            if data[pos : pos + 1] == b"\n":
                pos += 1
        else:
            newline = data.find(b"\n", pos)
            if newline < 0:
                newline = len(data)
            payload = data[pos:newline]
            pos = newline + 1
        items.append(Item(item_headers, payload))
    return Envelope(json.loads(header_line) if header_line.strip() else {}, items, data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the SDK keeps its connection open

    def do_POST(self):
        server: SentryServer = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not (self.path.startswith("/api/") and self.path.rstrip("/").endswith("/envelope")):
            self._reply(404, b"{}")
            return
        try:
            envelope = parse_envelope(decode_body(body, self.headers.get("Content-Encoding")))
        except Exception as exc:  # keep it: a test must see that something was unreadable
            server._record_error(f"{type(exc).__name__}: {exc}")
            self._reply(400, b"{}")
            return
        envelope.http_headers = dict(self.headers.items())
        server._record(envelope)
        self._reply(200, b"{}")

    def _reply(self, status: int, body: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


class SentryServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, project: int = 1):
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self.host, self.port = self._httpd.server_address[:2]
        self.dsn = f"http://publickey@{self.host}:{self.port}/{project}"
        self._lock = threading.Lock()
        self._envelopes: list[Envelope] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="sentry-server", daemon=True
        )

    # lifecycle
    def start(self) -> "SentryServer":
        self._thread.start()
        return self

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # recording
    def _record(self, envelope: Envelope):
        with self._lock:
            self._envelopes.append(envelope)

    def _record_error(self, message: str):
        with self._lock:
            self.errors.append(message)

    def clear(self):
        with self._lock:
            self._envelopes.clear()
            self.errors.clear()

    # queries
    @property
    def envelopes(self) -> list[Envelope]:
        with self._lock:
            return list(self._envelopes)

    def items(self, *types: str) -> list[Item]:
        return [i for e in self.envelopes for i in e.items if not types or i.type in types]

    def events(self) -> list[dict]:
        """Error/message events (item type `event`), parsed."""
        return [i.json() for i in self.items("event")]

    def transactions(self) -> list[dict]:
        return [i.json() for i in self.items("transaction")]

    def raw(self) -> bytes:
        """Every decoded envelope byte received, concatenated (for absence checks)."""
        return b"\n".join(e.raw for e in self.envelopes)

    def wait_for(self, predicate, timeout: float = 10, interval: float = 0.05):
        """Poll until predicate(self) is truthy; return its value (AssertionError on timeout)."""
        deadline = time.time() + timeout
        while True:
            value = predicate(self)
            if value:
                return value
            if time.time() >= deadline:
                raise AssertionError(
                    f"local Sentry: condition not met after {timeout}s; received item types "
                    f"{[i.type for i in self.items()]}, errors {self.errors}"
                )
            time.sleep(interval)
