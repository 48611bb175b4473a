"""Benchmark: the genre and score models and the similar-movies index on many posters.

    .venv/bin/python benchmarks/scale.py [--sizes 10000,50000,100000] [--dim 5680] [--genres 21]
                                         [--dtype float16] [--max-steps N] [--dir /tmp]

Each size runs in a fresh process on synthetic embeddings of the default features' width
(genres and scores depend on a few random directions, so the models have something to
learn), written block by block to a ``.npy`` file of ``--dtype`` in a temporary folder under
``--dir`` (removed at the end) and read from there as a memory map, as the models would read
a feature store too large for memory. It prints the seconds of ``GenreClassifier.fit`` (its
network and its out-of-fold calibration; ``GenreClassifier(max_steps=--max-steps)``),
``ScoreRegressor.fit`` and ``SimilarIndex.build``, and the process's peak resident memory
(``VmHWM``, reset before each model, so each peak includes the process but not the other
models), then their total and how each grows from the smallest size. The genre
probabilities the index is built from are computed between the timed steps. Catalogue parsing
at scale is ``benchmarks/scale_catalog.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BLOCK = 8192  # rows made at a time
def _default_max_steps() -> int:
    """``GenreClassifier``'s own step budget (its default: 20 epochs up to 204,800 posters, 4 at 1,000,000)."""
    import inspect

    from posterlens.models.estimators import GenreClassifier

    return inspect.signature(GenreClassifier).parameters["max_steps"].default


def synthetic(path: Path, n: int, dim: int, genres: int, dtype: str = "float32", seed: int = 0):
    """Write ``n`` embeddings to the ``.npy`` file ``path`` (``dtype``) block by block; return them as a
    read-only memory map, with a 0/1 genre matrix (about 2.4 genres a poster) and scores."""
    import numpy as np

    rng = np.random.default_rng(seed)
    W = rng.standard_normal((dim, genres)).astype(np.float32) / np.sqrt(dim)
    logits, y = np.empty((n, genres), dtype=np.float32), np.empty(n)
    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                   "fortran_order": False, "shape": (n, dim)})
        for start in range(0, n, BLOCK):  # written with file writes: the process never maps the file
            stored = rng.standard_normal((min(BLOCK, n - start), dim), dtype=np.float32).astype(dtype, copy=False)
            X = stored.astype(np.float32)  # as the models will read it
            logits[start:start + len(X)] = X @ W * 3
            y[start:start + len(X)] = X[:, :8].sum(axis=1) * 0.2
            stored.tofile(out)
    logits += rng.standard_normal((n, genres)).astype(np.float32)
    Y = (logits > np.quantile(logits, 1 - 2.4 / genres, axis=0)).astype(np.float32)
    y += 6.3 + rng.normal(0, 0.8, n)
    return np.load(path, mmap_mode="r"), Y, y


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Start ``VmHWM`` again from the current resident size (Linux: ``clear_refs`` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def one_size(n: int, dim: int, genres: int, dtype: str, max_steps: int, folder: str | None) -> dict:
    """Time each model on ``n`` synthetic posters, in this process."""
    import pandas as pd

    from posterlens.models.estimators import GenreClassifier, ScoreRegressor
    from posterlens.models.similar import SimilarIndex

    seconds, peaks = {}, {}

    def timed(name, work):
        _reset_peak()
        start = time.perf_counter()
        result = work()
        seconds[name], peaks[f"{name}_mb"] = time.perf_counter() - start, round(_peak_mb())
        return result

    with tempfile.TemporaryDirectory(prefix="posterlens-scale-", dir=folder) as tmp:
        X, Y, y = timed("data", lambda: synthetic(Path(tmp) / "X.npy", n, dim, genres, dtype))
        genre_model = timed("genre", functools.partial(GenreClassifier(max_steps=max_steps).fit, X, Y))
        timed("score", functools.partial(ScoreRegressor().fit, X, y))
        P = genre_model.predict_proba(X)
        del X
    movies = pd.DataFrame({"id": range(n), "title": "", "genres": "", "score": y, "key": range(n)})
    timed("index", lambda: SimilarIndex.build(P, movies))
    models = ("genre", "score", "index")
    return {"n": n, "dtype": dtype, "max_steps": max_steps, "epochs": genre_model.epochs_for(n),
            **{k: round(v, 1) for k, v in seconds.items()}, "total": round(sum(seconds[k] for k in models), 1),
            **peaks, "peak_mb": max(peaks[f"{k}_mb"] for k in models)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000,100000")
    parser.add_argument("--dim", type=int, default=5680)
    parser.add_argument("--genres", type=int, default=21)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="the embeddings' type on disk (1M x 5,680 float32 is 22.7 GB, float16 11.4 GB)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="GenreClassifier(max_steps=...), default its own; 0: no step budget, every size trains 20 epochs")
    parser.add_argument("--dir", help="where the temporary embeddings file goes (default: the system's temp folder)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.max_steps is None:
        args.max_steps = _default_max_steps()
    if args.one:
        print(json.dumps(one_size(args.one, args.dim, args.genres, args.dtype, args.max_steps, args.dir)))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        command = [sys.executable, __file__, "--one", str(n), "--dim", str(args.dim), "--genres", str(args.genres),
                   "--dtype", args.dtype, "--max-steps", str(args.max_steps)] + (["--dir", args.dir] if args.dir else [])
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout  # its errors show
        rows.append(json.loads(out.strip().splitlines()[-1]))
        first, row = rows[0], rows[-1]
        growth = ", ".join(f"{k} x{row[k] / max(first[k], 1e-9):.1f}"
                           for k in ("genre", "score", "index", "total", "peak_mb"))
        print(f"{row['n']:>7} posters: genre model {row['genre']:6.1f} s (peak {row['genre_mb']} MB, "
              f"{row['epochs']} epochs), score model {row['score']:5.1f} s (peak {row['score_mb']} MB), similar index "
              f"{row['index']:5.1f} s (peak {row['index_mb']} MB); total {row['total']:6.1f} s (peak {row['peak_mb']} MB); "
              f"{row['dtype']} embeddings made on disk in {row['data']:.1f} s (peak {row['data_mb']} MB); "
              f"vs {first['n']}: {growth}", flush=True)


if __name__ == "__main__":
    main()
