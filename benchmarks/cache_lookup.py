"""Benchmark: looking up keys in the feature store does not grow with the store.

    .venv/bin/python benchmarks/cache_lookup.py [--sizes 10000,1000000] [--lookups 1000] [--repeats 7]
        [--dim 16] [--chunk-rows 4096]

Builds one synthetic cache a size in a temporary folder, through ``FeatureCache.add`` (chunks of
``--chunk-rows`` rows, the size of the files ``compact`` merges to; keys are SHA-256 hex digests
like real ones; vectors ``--dim`` float32, stored as float16), then, ``--repeats`` times, the sizes interleaved so
that a noisy machine hurts them alike, opens a fresh ``FeatureCache`` and looks up ``--lookups``
random present keys (a new sample each time), checking the vectors it gets. It prints, for each
size, the milliseconds to open the cache and to look up the keys (min and median) and, on its
last line, the ratio of the largest size's median lookup to the smallest's.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from posterlens.features.backbones import Backbone, resolve
from posterlens.features.store import FeatureCache, rounded


def vectors(rows: np.ndarray, dim: int) -> np.ndarray:
    """The synthetic embedding of each row: its number in two parts (within float16's range), then a ramp."""
    out = np.tile(np.arange(dim, dtype=np.float32) / dim, (len(rows), 1))
    out[:, 0], out[:, 1] = rows % 1024, rows // 1024
    return out


def build(root: Path, backbone: Backbone, size: int, chunk_rows: int) -> list[str]:
    """A cache of ``size`` keys in ``root``; the keys, key ``i`` holding ``vectors(i)``."""
    cache = FeatureCache(root, backbone)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(size)]
    for start in range(0, size, chunk_rows):
        rows = np.arange(start, min(start + chunk_rows, size))
        cache.add(keys[start:start + len(rows)], vectors(rows, backbone.feature_dim))
    assert len(cache) == size
    return keys


def lookup(root: Path, backbone: Backbone, keys: list[str], lookups: int, rng: np.random.Generator) -> tuple[float, float]:
    """Seconds to open a fresh cache object, and to look up ``lookups`` random keys in it."""
    rows = rng.choice(len(keys), lookups, replace=False)
    start = time.perf_counter()
    cache = FeatureCache(root, backbone)
    opened = time.perf_counter()
    found = cache.get([keys[i] for i in rows])
    done = time.perf_counter()
    assert np.array_equal(np.stack([found[keys[i]] for i in rows]), rounded(vectors(rows, backbone.feature_dim)))
    return opened - start, done - opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    backbone = replace(resolve(), feature_dim=args.dim)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="cache_lookup-") as tmp:
        keys = {}
        for size in sizes:
            start = time.perf_counter()
            keys[size] = build(Path(tmp) / str(size), backbone, size, args.chunk_rows)
            folder = Path(tmp) / str(size)
            mib = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
            chunks = len(list(folder.rglob("*.safetensors")))
            print(f"{size:>9,} entries: {chunks} chunk files, {mib:.0f} MiB, built in {time.perf_counter() - start:.1f} s",
                  flush=True)
        times: dict[int, list[tuple[float, float]]] = {size: [] for size in sizes}
        for _ in range(args.repeats):
            for size in sizes:
                times[size].append(lookup(Path(tmp) / str(size), backbone, keys[size], args.lookups, rng))
    for size in sizes:
        opens, gets = (np.array(t) * 1e3 for t in zip(*times[size]))
        print(f"{size:>9,} entries: open min {opens.min():.1f} ms, median {np.median(opens):.1f} ms; "
              f"{args.lookups:,} lookups min {gets.min():.1f} ms, median {np.median(gets):.1f} ms")
    medians = [statistics.median(t for _, t in times[size]) for size in (sizes[0], sizes[-1])]
    print(f"ratio {medians[1] / medians[0]:.1f}x")


if __name__ == "__main__":
    main()
