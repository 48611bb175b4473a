"""Benchmark: decoding and resizing posters, the fast path (simplejpeg + OpenCV) against Pillow's.

    .venv/bin/python benchmarks/decode_speed.py [--images DIR] [--limit 600] [--size 224x320] [--repeats 5]

Reads ``--limit`` posters of ``--images`` (by name) into memory, then, ``--repeats`` times, the two
paths interleaved, times ``data.images.decode_sizes`` on each of them on one thread: as it is
(``_decode_fast`` where it applies) and with ``FAST_SHRINK`` set to 0 (every image through Pillow,
as before). Prints each path's milliseconds a poster (min and median), the ratio of the medians,
how many posters took the fast path, and how far its pixels are from Pillow's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from posterlens.data import images

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "posters"


def _decode_all(datas: list[bytes], size: tuple[int, int], fast: bool) -> tuple[float, list[np.ndarray]]:
    """Seconds to decode every poster at ``size``, by the fast path where it applies or by Pillow; the pixels."""
    saved = images.FAST_SHRINK
    images.FAST_SHRINK = saved if fast else 0.0
    try:
        start = time.perf_counter()
        pixels = [np.asarray(images.decode_sizes("poster", data, [size])[0]) for data in datas]
        return time.perf_counter() - start, pixels
    finally:
        images.FAST_SHRINK = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED / "images")
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--size", default="224x320", help="width x height, a backbone's input")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in images.IMAGE_SUFFIXES)[:args.limit]
    datas = [images.read_poster_bytes(p) for p in files]
    seconds: dict[str, list[float]] = {"fast path": [], "Pillow": []}
    for _ in range(args.repeats):
        fast_s, fast = _decode_all(datas, size, fast=True)
        pillow_s, pillow = _decode_all(datas, size, fast=False)
        seconds["fast path"].append(fast_s)
        seconds["Pillow"].append(pillow_s)
    for name, values in seconds.items():
        print(f"{name:9s}: {1000 * min(values) / len(datas):.3f} ms a poster min, "
              f"{1000 * statistics.median(values) / len(datas):.3f} median")
    took = sum(images._decode_fast(data, [size], images.MAX_PIXELS) is not None for data in datas)
    diffs = [np.abs(a.astype(int) - b) for a, b in zip(fast, pillow)]
    print(f"{len(datas)} posters at {size[0]}x{size[1]}, {took} by the fast path; pixels vs Pillow's: "
          f"max {max(int(d.max()) for d in diffs)} grey levels, mean {np.mean([d.mean() for d in diffs]):.3f}")
    print(f"ratio {statistics.median(seconds['Pillow']) / statistics.median(seconds['fast path']):.2f}x")


if __name__ == "__main__":
    main()
