"""Benchmark: bulk prediction throughput (cold: no feature cache) and one-poster latency.

    .venv/bin/python benchmarks/predict_speed.py --model MODEL_DIR [--images DIR] [--repeats 50]

Bulk: ``posterlens predict`` on every poster of the folder, in a fresh process, with a new
empty cache, timed end to end (model load and ONNX export included). Latency: one poster
through ``Predictor.predict`` with the model already loaded (p50 / p90 over repeats).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "posters" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", default=str(SHARED))
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    posters = sorted(Path(args.images).glob("*.jpg"))
    cli = Path(sys.executable).parent / "posterlens"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([str(cli), "predict", "--model", args.model, "--images", args.images, "--out", f"{tmp}/out",
                        "--cache", f"{tmp}/cache"], check=True, capture_output=True)
        seconds = time.perf_counter() - start
        print(f"bulk cold: {len(posters)} posters in {seconds:.1f} s = {len(posters) / seconds:.1f} posters/s")
        import posterlens

        predictor = posterlens.load(args.model, cache=None)
        predictor.predict(posters[:1])  # warm-up
        times = []
        for poster in posters[: args.repeats]:
            t0 = time.perf_counter()
            predictor.predict([poster])
            times.append(1000 * (time.perf_counter() - t0))
        q = statistics.quantiles(times, n=10)
        print(f"one poster, model loaded: p50 {statistics.median(times):.1f} ms, p90 {q[8]:.1f} ms ({len(times)} runs)")


if __name__ == "__main__":
    main()
