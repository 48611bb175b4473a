"""Peak memory of ``fetch`` against compression bombs, next to what ``fetch.py`` promises
(at most ``concurrency * max_bytes`` of bodies held while they are checked).

A local server on 127.0.0.1 answers each of N URLs with a gzip (or deflate) body that
inflates to ``--inflated`` bytes of zeros. Each run is a fresh process; the figure is its
peak resident memory (``resource.getrusage``), beside the same process's baseline after
importing posterlens. Run:

    .venv/bin/python benchmarks/fetch_bombs.py [--n 16] [--inflated 1000000000] [--max-bytes 10000000]
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import resource
import tempfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd


class BombServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, body: bytes, encoding: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.body, self.encoding = body, encoding

    def handle_error(self, request, client_address) -> None:
        pass  # the client hangs up on a bomb mid-body: that is the point


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BombServer

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Encoding", self.server.encoding)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(base: str, n: int, max_bytes: int, out: str, result) -> None:
    from posterlens.data.fetch import FetchConfig, fetch_posters

    before = _peak_mb()
    catalog = pd.DataFrame({"id": [f"tt{i:07d}" for i in range(n)], "url": [f"{base}/{i}.jpg" for i in range(n)]})
    config = FetchConfig(max_bytes=max_bytes, retries=0, allow_private_hosts=True)
    summary = fetch_posters(catalog, Path(out), config, progress=False)
    result.put((before, _peak_mb(), summary.counts, config.concurrency))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--inflated", type=int, default=1_000_000_000)
    parser.add_argument("--max-bytes", type=int, default=10_000_000)
    args = parser.parse_args()
    zeros = bytes(args.inflated)
    bodies = {"gzip": gzip.compress(zeros, 9), "deflate": zlib.compress(zeros, 9)}
    del zeros
    for encoding, body in bodies.items():
        with BombServer(body, encoding) as server, tempfile.TemporaryDirectory() as out:
            import threading

            threading.Thread(target=server.serve_forever, daemon=True).start()
            result = multiprocessing.get_context("spawn").Queue()
            child = multiprocessing.get_context("spawn").Process(
                target=_child, args=(f"http://127.0.0.1:{server.server_address[1]}", args.n, args.max_bytes, out, result))
            child.start()
            before, peak, counts, concurrency = result.get(timeout=600)
            child.join()
            server.shutdown()
        promise = concurrency * args.max_bytes / 1e6
        print(f"{encoding}: {args.n} bombs of {len(body):,} bytes -> {args.inflated:,}: {counts}; "
              f"peak {peak:.0f} MB ({peak - before:+.0f} MB over the {before:.0f} MB after import); "
              f"promised at most {promise:.0f} MB of bodies")


if __name__ == "__main__":
    main()
