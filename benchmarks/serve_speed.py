"""Benchmark: POST /api/predict on a real uvicorn server (127.0.0.1), model loaded, one poster a request.

    .venv/bin/python benchmarks/serve_speed.py --model MODEL_DIR [--images DIR] [--requests 60]
        [--clients 4] [--rounds 5]

Each round sends ``--requests`` posters (distinct files, cycled) from ``--clients`` threads
and reports requests/s and p50/p95 latency; the summary gives the min and the median over
rounds, since a shared machine is noisy. Similar movies are part of each answer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample" / "images"


def one_round(url: str, posters: list[bytes], requests: int, clients: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p95 ms) of one round."""
    with httpx.Client(base_url=url, timeout=120) as http:
        def post(i: int) -> float:
            start = time.perf_counter()
            response = http.post("/api/predict", files={"image": (f"{i}.jpg", posters[i % len(posters)], "image/jpeg")})
            response.raise_for_status()
            return 1000 * (time.perf_counter() - start)

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = list(pool.map(post, range(requests)))
        seconds = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=20)
    return requests / seconds, statistics.median(latencies), q[18]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", default=str(SAMPLE))
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import posterlens
    from posterlens.app import serve

    posters = [p.read_bytes() for p in sorted(Path(args.images).glob("*.jpg"))]
    predictor = posterlens.load(args.model)
    serve.warm_up(predictor)
    rounds = []
    with serve.background(serve.create_app(predictor)) as url:
        one_round(url, posters, 8, args.clients)  # warm-up
        for i in range(args.rounds):
            rounds.append(one_round(url, posters, args.requests, args.clients))
            print(f"round {i + 1}: {rounds[-1][0]:.1f} req/s, p50 {rounds[-1][1]:.0f} ms, p95 {rounds[-1][2]:.0f} ms")
    for name, column in zip(("req/s", "p50 ms", "p95 ms"), zip(*rounds)):
        print(f"{name}: min {min(column):.1f}, median {statistics.median(column):.1f}")


if __name__ == "__main__":
    main()
