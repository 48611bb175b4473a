"""Time poster downloads: a sequential ``requests`` loop against ``posterlens.data.fetch``.

A local server on 127.0.0.1 answers every request after 50 ms (a stand-in for a remote
image host), serving the bundled sample posters in a cycle under 500 URLs. Run:

    .venv/bin/python benchmarks/fetch_concurrency.py [--n 500] [--latency 0.05] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import requests

from posterlens.data.fetch import FetchConfig, fetch_posters

SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "examples" / "sample" / "images"


class PosterServer(ThreadingHTTPServer):
    """Serves ``/p/<i>.jpg`` as ``posters[i % len(posters)]`` after ``latency`` seconds."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: the default 5 drops bursts of connections

    def __init__(self, posters: list[bytes], latency: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posters = posters
        self.latency = latency


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: PosterServer

    def do_GET(self) -> None:  # noqa: N802
        time.sleep(self.server.latency)
        index = int(self.path.rsplit("/", 1)[-1].removesuffix(".jpg"))
        body = self.server.posters[index % len(self.server.posters)]
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def sequential_requests(urls: list[str], out_dir: Path) -> float:
    """Seconds for a plain ``requests`` loop that saves each body."""
    start = time.perf_counter()
    with requests.Session() as session:
        for i, url in enumerate(urls):
            response = session.get(url, timeout=20)
            response.raise_for_status()
            (out_dir / f"tt{i:07d}.jpg").write_bytes(response.content)
    return time.perf_counter() - start


def posterlens_fetch(
    urls: list[str], out_dir: Path, concurrency: int
) -> tuple[float, dict[str, int]]:
    """Seconds for ``fetch_posters`` (validation included) and its status counts."""
    catalog = pd.DataFrame({"id": [f"tt{i:07d}" for i in range(len(urls))], "url": urls})
    start = time.perf_counter()
    summary = fetch_posters(catalog, out_dir, FetchConfig(concurrency=concurrency), progress=False)
    return time.perf_counter() - start, summary.counts


def serve(latency: float, port_queue: multiprocessing.Queue) -> None:
    """Child process: serve the sample posters until terminated."""
    posters = [p.read_bytes() for p in sorted(SAMPLE_IMAGES.glob("*.jpg"))]
    server = PosterServer(posters, latency)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="number of URLs")
    parser.add_argument("--latency", type=float, default=0.05, help="server delay per request (s)")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    # The server gets its own process, like a remote host: it does not compete for our GIL.
    spawn = multiprocessing.get_context("spawn")  # a clean interpreter, not a fork of this one
    port_queue = spawn.Queue()
    server = spawn.Process(target=serve, args=(args.latency, port_queue), daemon=True)
    server.start()
    port = port_queue.get(timeout=30)
    urls = [f"http://127.0.0.1:{port}/p/{i}.jpg" for i in range(args.n)]
    try:
        with tempfile.TemporaryDirectory() as seq_dir, tempfile.TemporaryDirectory() as fetch_dir:
            seq = sequential_requests(urls, Path(seq_dir))
            conc, counts = posterlens_fetch(urls, Path(fetch_dir), args.concurrency)
    finally:
        server.terminate()
        server.join()

    n_files = len(list(SAMPLE_IMAGES.glob("*.jpg")))
    latency_ms = args.latency * 1000
    print(f"{args.n} posters ({n_files} distinct files), {latency_ms:.0f} ms server latency")
    print(f"sequential requests loop       : {seq:6.2f} s  ({args.n / seq:6.1f} posters/s)")
    print(
        f"posterlens fetch_posters (c={args.concurrency}): {conc:6.2f} s  "
        f"({args.n / conc:6.1f} posters/s)  statuses {counts}"
    )
    print(f"speed-up: {seq / conc:.1f}x")


if __name__ == "__main__":
    main()
