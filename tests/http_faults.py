"""A loopback HTTP server with canned, per-path replies (and faults) for the fetch tests.

Each path maps to a list of ``Reply``: the n-th request to the path gets the n-th reply
(the last one repeats), so "500 then 200" is ``[Reply(500), Reply(body=jpeg)]``.
Unknown paths get a 404. The server runs in a daemon thread of the test process.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Reply:
    """One canned HTTP response."""

    status: int = 200
    body: bytes = b""
    content_type: str = "image/jpeg"
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None  # Content-Length to announce; None: len(body)
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    delay: float = 0.0  # seconds before the status line
    split_delay: float = 0.0  # seconds between the two halves of the body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real server
    disable_nagle_algorithm = True  # no delayed-ACK stalls between headers and body
    server: FaultServer

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = unquote(urlsplit(self.path).path)
        reply = self.server.next_reply(path)
        try:
            self._send(reply)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            self.close_connection = True

    def _send(self, reply: Reply) -> None:
        time.sleep(reply.delay)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        length = len(reply.body) if reply.declared_length is None else reply.declared_length
        if reply.send_length:
            self.send_header("Content-Length", str(length))
        if not reply.send_length or length != len(reply.body):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        half = len(reply.body) // 2
        self.wfile.write(reply.body[:half])
        self.wfile.flush()
        time.sleep(reply.split_delay)
        self.wfile.write(reply.body[half:])

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep test output quiet


class FaultServer(ThreadingHTTPServer):
    """Serve ``routes`` on ``host`` (default 127.0.0.1; random port) from a background thread."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: the default 5 drops bursts of connections

    def __init__(self, routes: dict[str, list[Reply]], host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.routes = routes
        self.hits: Counter[str] = Counter()  # path -> requests so far
        self.hit_times: defaultdict[str, list[float]] = defaultdict(list)  # time.monotonic()s
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def next_reply(self, path: str) -> Reply:
        with self._lock:
            n = self.hits[path]
            self.hits[path] += 1
            self.hit_times[path].append(time.monotonic())
        replies = self.routes.get(path) or [Reply(404, b"not found", "text/plain")]
        return replies[min(n, len(replies) - 1)]

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet when a client hangs up (timeouts, the SIGKILL test)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
