"""Benchmark: how quickly the command line answers, and one poster through a loaded Predictor.

    .venv/bin/python benchmarks/cli_speed.py [--model MODEL_DIR] [--poster FILE] [--runs 7] [--repeats 50]

``posterlens --help`` and a one-poster ``posterlens predict`` (the released model unless
``--model``; the poster's features already in the disk cache) run in fresh processes,
``--runs`` times each: min and median. Then one poster through ``Predictor.predict`` with
the model loaded, ``--repeats`` times: p50 and p95, for a file (its features found in the
cache) and for the same poster as an in-memory array (never cached: the backbones run).
Targets: --help <= 0.7 s, one-poster CLI <= 1.5 s, loaded p50 <= 20 ms. On a shared
machine, the minimum is the figure least disturbed by other jobs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE_POSTER = sorted((Path(__file__).resolve().parents[1] / "examples" / "sample" / "images").glob("*.jpg"))[0]


def command() -> list[str]:
    """The installed ``posterlens`` script next to this Python, else ``python -m posterlens``."""
    script = Path(sys.executable).parent / "posterlens"
    return [str(script)] if script.exists() else [sys.executable, "-m", "posterlens"]


def time_process(args: list[str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` fresh processes (each must succeed)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def time_calls(call, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    return times


def report(name: str, times: list[float], unit: str, target: float) -> None:
    best, median = min(times), statistics.median(times)
    status = "ok" if median <= target else "over target"
    print(f"{name}: min {best:.3f} {unit}, median {median:.3f} {unit} ({len(times)} runs; target {target} {unit}: {status})")


def report_quantiles(name: str, times: list[float], target: float) -> None:
    p50, p95 = statistics.median(times), statistics.quantiles(times, n=20)[18]
    status = "ok" if p50 <= target else "over target"
    print(f"{name}: p50 {p50:.1f} ms, p95 {p95:.1f} ms ({len(times)} runs; target p50 {target} ms: {status})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the released model)")
    parser.add_argument("--poster", type=Path, default=SAMPLE_POSTER)
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per command")
    parser.add_argument("--repeats", type=int, default=50, help="calls to the loaded Predictor")
    args = parser.parse_args()
    cli = command()
    report("posterlens --help", time_process([*cli, "--help"], args.runs), "s", 0.7)
    with tempfile.TemporaryDirectory() as tmp:
        predict = [*cli, "predict", str(args.poster), "--out", tmp, *(["--model", args.model] if args.model else [])]
        subprocess.run(predict, check=True, capture_output=True)  # warms the disk cache (and the ONNX export)
        report("posterlens predict, one poster, warm cache", time_process(predict, args.runs), "s", 1.5)

    import numpy as np
    from PIL import Image

    import posterlens

    predictor = posterlens.load(args.model)
    report_quantiles("Predictor.predict(file), loaded", time_calls(lambda: predictor.predict(args.poster), args.repeats), 20)
    pixels = np.asarray(Image.open(args.poster).convert("RGB"))
    report_quantiles("Predictor.predict(array), loaded, never cached",
                     time_calls(lambda: predictor.predict(pixels), args.repeats), 20)


if __name__ == "__main__":
    main()
