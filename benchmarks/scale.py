"""Benchmark: the genre and score models and the similar-movies index on many posters.

    .venv/bin/python benchmarks/scale.py [--sizes 10000,50000,100000] [--dim 5680] [--genres 21]

Each size runs in a fresh process on synthetic embeddings of the default features' width
(genres and scores depend on a few random directions, so the models have something to
learn). It prints the seconds of ``GenreClassifier.fit`` (its network and its out-of-fold
calibration), ``ScoreRegressor.fit`` and ``SimilarIndex.build``, and the process's peak
resident memory (``VmHWM``, reset before each model, so each peak includes the embeddings and
the process but not the other models), then how each grows from the smallest size. Catalogue parsing
at scale is ``benchmarks/scale_catalog.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def synthetic(n: int, dim: int, genres: int, seed: int = 0):
    """Embeddings, a 0/1 genre matrix (about 2.4 genres a poster) and scores."""
    import numpy as np

    rng = np.random.default_rng(seed)
    X = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):  # in blocks: no full-size temporaries
        X[start:start + 8192] = rng.standard_normal((min(8192, n - start), dim), dtype=np.float32)
    W = rng.standard_normal((dim, genres)).astype(np.float32) / np.sqrt(dim)
    logits = np.concatenate([X[s:s + 8192] @ W for s in range(0, n, 8192)]) * 3
    logits += rng.standard_normal((n, genres)).astype(np.float32)
    Y = (logits > np.quantile(logits, 1 - 2.4 / genres, axis=0)).astype(np.float32)
    y = 6.3 + X[:, :8].sum(axis=1) * 0.2 + rng.normal(0, 0.8, n)
    return X, Y, y


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Start ``VmHWM`` again from the current resident size (Linux: ``clear_refs`` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def one_size(n: int, dim: int, genres: int) -> dict:
    """Time each model on ``n`` synthetic posters, in this process."""
    import pandas as pd

    from posterlens.models.estimators import GenreClassifier, ScoreRegressor
    from posterlens.models.similar import SimilarIndex

    X, Y, y = synthetic(n, dim, genres)
    data_mb = _peak_mb()
    seconds, peaks = {}, {}

    def timed(name, work):
        _reset_peak()
        start = time.perf_counter()
        result = work()
        seconds[name], peaks[f"{name}_mb"] = time.perf_counter() - start, round(_peak_mb())
        return result

    genre_model = timed("genre", lambda: GenreClassifier().fit(X, Y))
    timed("score", lambda: ScoreRegressor().fit(X, y))
    P = genre_model.predict_proba(X)
    movies = pd.DataFrame({"id": range(n), "title": "", "genres": "", "score": y, "key": range(n)})
    timed("index", lambda: SimilarIndex.build(P, movies))
    return {"n": n, **{k: round(v, 1) for k, v in seconds.items()}, "data_mb": round(data_mb), **peaks,
            "peak_mb": max(peaks.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000,100000")
    parser.add_argument("--dim", type=int, default=5680)
    parser.add_argument("--genres", type=int, default=21)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.dim, args.genres)))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--dim", str(args.dim),
                              "--genres", str(args.genres)], check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        first, row = rows[0], rows[-1]
        growth = ", ".join(f"{k} x{row[k] / max(first[k], 1e-9):.1f}" for k in ("genre", "score", "index", "peak_mb"))
        print(f"{row['n']:>7} posters: genre model {row['genre']:6.1f} s (peak {row['genre_mb']} MB), score model "
              f"{row['score']:5.1f} s (peak {row['score_mb']} MB), similar index {row['index']:5.1f} s (peak "
              f"{row['index_mb']} MB); with the embeddings made {row['data_mb']} MB; vs {first['n']}: {growth}",
              flush=True)


if __name__ == "__main__":
    main()
