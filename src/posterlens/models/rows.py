"""Reading embeddings for the heads (``models.estimators``): an array in memory or a ``np.memmap``
on disk (float16 or float32), in blocks of ``fitted.ROWS`` rows or one training batch at a time,
never copied whole (docs/scaling.md, "Out-of-core heads")."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import numpy as np

from posterlens.models.fitted import ROWS, standardised

__all__ = ["features", "in_file", "take", "blocks", "by_blocks", "transformed", "standardiser", "sample", "Rows",
           "batches"]


def features(X) -> np.ndarray:
    """``X`` as it is where it is a 2-D float array (a memmap stays on disk), else a float32 copy."""
    if not (isinstance(X, np.ndarray) and X.dtype.kind == "f"):
        X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {X.shape}")
    return X


def in_file(X: np.ndarray) -> bool:
    """Whether ``X`` is a whole C-ordered ``np.memmap`` (``np.load(path, mmap_mode="r")``): its
    ``filename`` and ``offset`` then say where each row is, and ``take`` reads it from the file."""
    return isinstance(X, np.memmap) and isinstance(X.base, mmap.mmap) and X.flags.c_contiguous and bool(X.filename)


def take(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``X``'s ``rows`` as a new array of its type: read from the file where ``X`` is a whole memmap
    (``in_file``), one ``pread`` a run of consecutive rows, else by indexing.

    Reading a memory map maps the pages it touches into the process, and on this kernel a page
    cache folio at a time (up to 2 MB for one 11 KB row): a few thousand random rows mapped the
    whole file, which then counted as the process's memory. Read from the file, the rows go
    through the OS page cache alone.
    """
    if not in_file(X):
        return X[rows]
    out = np.empty((len(rows), *X.shape[1:]), dtype=X.dtype)
    row_bytes = out[:1].nbytes
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    with open(X.filename, "rb", buffering=0) as file:
        for first, last in zip([0, *breaks], [*breaks, len(rows)]):
            target = out[first:last]
            if os.preadv(file.fileno(), [target], X.offset + int(rows[first]) * row_bytes) != target.nbytes:
                raise OSError(f"{X.filename}: shorter than its {len(X):,} rows")
    return out


def blocks(X: np.ndarray, rows: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """``X``'s rows (or its ``rows``, in the order given), ``ROWS`` at a time, each a new float32 array."""
    n = len(X) if rows is None else len(rows)
    for start in range(0, n, ROWS):
        chunk = np.arange(start, min(start + ROWS, n)) if rows is None else rows[start:start + ROWS]
        yield take(X, chunk).astype(np.float32, copy=False)  # a new array: callers may standardise it in place


def by_blocks(predict, X: np.ndarray) -> np.ndarray:
    """``predict`` on ``blocks`` of ``X``, stacked (blocks of ``ROWS``, as ``fitted.by_rows``)."""
    if len(X) == 0:
        return predict(X)
    return np.concatenate([predict(block) for block in blocks(X)])


def transformed(transform, X: np.ndarray, rows: np.ndarray | None, width: int) -> np.ndarray:
    """``transform`` of each of ``blocks(X, rows)``, written into one float32 array of ``width`` columns."""
    out = np.empty((len(X) if rows is None else len(rows), width), dtype=np.float32)
    for start, block in zip(range(0, len(out), ROWS), blocks(X, rows)):
        out[start:start + len(block)] = transform(block)
    return out


def standardiser(X: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (1 where constant) of ``X`` (or its ``rows``), summed in float64 over ``blocks``."""
    total, squares = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for block in blocks(X, rows):
        total += block.sum(axis=0, dtype=np.float64)
        squares += np.square(block, out=block).sum(axis=0, dtype=np.float64)  # the block is a copy
    n = len(X) if rows is None else len(rows)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def sample(n: int, size: int, seed: int) -> np.ndarray:
    """Every row of ``n`` where ``size`` covers them, else ``size`` rows drawn with ``seed``; sorted."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))



class Rows:
    """Map-style data whose index is a whole batch: the batch's rows of ``X`` read in one go, in
    sorted order (a memmap reads forward), standardised with ``(mean, std)`` where given, and their
    targets. ``X`` is read a batch at a time: no copy of it is made, in memory or on disk.
    (fastai's own DataLoader fetches items one by one: 15x slower for embeddings.)"""

    def __init__(self, X: np.ndarray, y: np.ndarray, rows: np.ndarray, standardise: tuple[np.ndarray, np.ndarray] | None):
        self.X, self.y, self.rows, self.standardise = X, y, rows, standardise

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions):
        import torch

        wanted = np.sort(self.rows[positions])
        block = take(self.X, wanted)
        block = standardised(block, *self.standardise, inplace=True) if self.standardise else block.astype(np.float32, copy=False)
        return torch.from_numpy(block), torch.from_numpy(np.ascontiguousarray(self.y[wanted]))


def batches(data: Rows, batch_size: int, shuffle: bool):
    """A PyTorch DataLoader of whole batches of ``data`` (in random order with ``shuffle``)."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

    order = RandomSampler(data) if shuffle else SequentialSampler(data)
    return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None)
