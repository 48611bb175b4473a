"""Poster embeddings: each backbone of a ``FeatureSpec`` side by side, through the feature store.

Each poster is read, hashed and decoded once for all backbones, then resized to each one's
input; posters found in the store are not decoded at all. Images are decoded in worker
threads while the networks run (OpenVINO's in threads of its own, ``IN_FLIGHT`` batches at a
time). ``load_dataset`` reads a catalogue and embeds it: the ``Dataset`` training, evaluation,
tuning and comparison start from.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from posterlens.data import catalog
from posterlens.data.dataset import Dataset
from posterlens.data.images import PosterError, content_hash, decode_sizes, read_poster_bytes
from posterlens.errors import DataError
from posterlens.features.backbones import Backbone
from posterlens.features.engines import BATCH_SIZES, INT8, Pending, Runner, make_runners, resolve_engine
from posterlens.features.store import FeatureCache, NoCache, rounded
from posterlens.progress import progress as progress_bar

if TYPE_CHECKING:
    from posterlens.features.ocr import OcrSettings

__all__ = ["Embeddings", "FeatureSpec", "embed", "embed_files", "load_dataset"]

log = logging.getLogger(__name__)

IN_FLIGHT = 2  # batches the networks hold (OpenVINO computes them in its threads) while the next is decoded
STORE_ROWS = 1024  # the most computed embeddings written to a backbone's store in one chunk file (``_Writer``)


@dataclass
class Embeddings:
    """Features for a list of poster files (float32 at float16 precision, ``store.rounded``); rows of files
    that failed are NaN."""

    paths: list[str]
    features: np.ndarray
    keys: list[str | None] = field(default_factory=list)  # content hash of each file
    errors: dict[str, str] = field(default_factory=dict)  # path -> reason
    computed: int = 0  # distinct images embedded by at least one backbone in this call
    cached: int = 0  # rows whose whole embedding came from the cache
    seconds: float = 0.0

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the rows that hold a real embedding."""
        return ~np.isnan(self.features).any(axis=1)


@dataclass(frozen=True)
class FeatureSpec:
    """The embedding of a model: its backbones' features, concatenated in this order."""

    backbones: tuple[Backbone, ...]

    @property
    def feature_dim(self) -> int:
        return sum(b.feature_dim for b in self.backbones)

    @property
    def name(self) -> str:
        return "+".join(b.name for b in self.backbones)



def _read_and_hash(paths: Sequence[str], suffix: str) -> tuple[list[str | None], dict[str, str]]:
    keys: list[str | None] = []
    errors: dict[str, str] = {}
    for path in paths:
        try:
            keys.append(content_hash(read_poster_bytes(path)) + suffix)
        except PosterError as err:
            keys.append(None)
            errors[path] = err.reason
    return keys, errors


Batch = list[tuple[int, tuple[bool, ...]]]  # (row, which backbones need it)


def _decode_batch(paths: Sequence[str], batch: Batch, spec: FeatureSpec,
                  mirror: bool) -> tuple[list[tuple[list[int], np.ndarray]], dict[int, str]]:
    """Decode each poster of a batch once, at the input size of each backbone that needs it.

    Returns, for each backbone, the rows it got pixels for and those pixels; and the rows
    that failed, with the reason.
    """
    from PIL import ImageOps

    rows: list[list[int]] = [[] for _ in spec.backbones]
    arrays: list[list[np.ndarray]] = [[] for _ in spec.backbones]
    errors: dict[int, str] = {}
    for row, needs in batch:
        wanted = [j for j, need in enumerate(needs) if need]
        sizes = [(spec.backbones[j].width, spec.backbones[j].height) for j in wanted]
        try:
            images = decode_sizes(paths[row], read_poster_bytes(paths[row]), sizes)
        except (PosterError, OSError) as err:
            errors[row] = getattr(err, "reason", str(err))
            continue
        for j, image in zip(wanted, images):
            rows[j].append(row)
            arrays[j].append(np.asarray(ImageOps.mirror(image) if mirror else image, dtype=np.uint8))
    pixels = [np.stack(a) if a else np.zeros((0, b.height, b.width, 3), np.uint8) for a, b in zip(arrays, spec.backbones)]
    return list(zip(rows, pixels)), errors


def _prefetched(batches: list[Batch], load: Callable[[Batch], tuple], depth: int = 2) -> Iterator[tuple]:
    """Yield ``load(batch)`` for each batch, decoding the next ones in threads meanwhile."""
    with ThreadPoolExecutor(max_workers=depth) as pool:
        queue: deque[tuple[Batch, Future]] = deque()
        for batch in batches:
            queue.append((batch, pool.submit(load, batch)))
            if len(queue) > depth:
                b, fut = queue.popleft()
                yield b, fut.result()
        while queue:
            b, fut = queue.popleft()
            yield b, fut.result()


def _submit(runner: Runner, pixels: np.ndarray) -> Pending:
    """``runner`` started on ``pixels``: in its threads where it has ``submit`` (OpenVINO), else run now."""
    submit = getattr(runner, "submit", None)
    return submit(pixels) if submit is not None else Pending.ready(runner(pixels))


@dataclass
class _Started:
    """A batch handed to the networks: its size, and for each backbone that runs, its index, the
    rows it embeds and their features to come."""

    posters: int
    parts: list[tuple[int, list[int], Pending]]

    def finished(self) -> bool:
        """Whether every network finished, without an error."""
        return all(pending.finished() for _, _, pending in self.parts)


class _Writer:
    """Computed embeddings on their way to each backbone's store: the first batch at once, then each
    chunk file as large as all the ones before it together, up to ``STORE_ROWS`` rows. A cold job
    of N posters writes about log2(N / batch) + N / ``STORE_ROWS`` files (instead of one a batch,
    which the store would merge again past ``store.COMPACT_AFTER``), and a job killed part way
    loses at most half of what it computed and at most ``STORE_ROWS`` posters; ``flush`` writes
    the rest."""

    def __init__(self, caches: Sequence[FeatureCache | NoCache]):
        self.caches = caches
        self.keys: list[list[str]] = [[] for _ in caches]
        self.vectors: list[list[np.ndarray]] = [[] for _ in caches]
        self.written = [0] * len(caches)

    def add(self, j: int, keys: list[str], vectors: np.ndarray) -> None:
        self.keys[j] += keys
        self.vectors[j].append(vectors)
        if len(self.keys[j]) >= min(STORE_ROWS, max(self.written[j], 1)):
            self._write(j)

    def flush(self) -> None:
        for j in range(len(self.caches)):
            self._write(j)

    def _write(self, j: int) -> None:
        if self.keys[j]:
            self.caches[j].add(self.keys[j], np.concatenate(self.vectors[j]))
            self.written[j] += len(self.keys[j])
            self.keys[j], self.vectors[j] = [], []


@dataclass
class _Job:
    """One ``embed`` call's posters: their keys, the rows sharing each key still to compute (``todo``),
    the features so far (NaN where missing) and the errors."""

    paths: list[str]
    keys: list[str | None]
    errors: dict[str, str]
    spec: FeatureSpec
    features: np.ndarray = field(init=False)
    columns: list[slice] = field(init=False)  # each backbone's columns of ``features``
    todo: dict[str, list[int]] = field(default_factory=dict)  # identical images are computed once
    needs: dict[str, tuple[bool, ...]] = field(default_factory=dict)  # which backbones lack each image

    def __post_init__(self) -> None:
        self.features = np.full((len(self.paths), self.spec.feature_dim), np.nan, dtype=np.float32)
        ends = np.cumsum([b.feature_dim for b in self.spec.backbones])
        self.columns = [slice(end - b.feature_dim, end) for b, end in zip(self.spec.backbones, ends)]

    def look_up(self, caches: Sequence[FeatureCache | NoCache]) -> None:
        """Fill what the caches hold (index lookups: the cache's size does not matter); note the rest."""
        known = [cache.get(dict.fromkeys(key for key in self.keys if key is not None)) for cache in caches]
        for i, key in enumerate(self.keys):
            if key is None:
                continue
            for table, cols in zip(known, self.columns):
                if key in table:
                    self.features[i, cols] = table[key]
            self.needs[key] = tuple(key not in table for table in known)
            if any(self.needs[key]):
                self.todo.setdefault(key, []).append(i)

    def fill(self, j: int, rows: list[int], vectors: np.ndarray) -> None:
        """Backbone ``j``'s features of ``rows`` (the first row of each key), into every row of their key."""
        for r, v in zip(rows, vectors):
            self.features[self.todo[self.keys[r]], self.columns[j]] = v

    def fail(self, row: int, reason: str) -> None:
        """A poster that could not be decoded: NaN in every row of its key, columns from the caches too."""
        self.features[self.todo[self.keys[row]]] = np.nan
        self.errors.update((self.paths[r], reason) for r in self.todo[self.keys[row]])


def _compute(job: _Job, batches: list[Batch], load: Callable[[Batch], tuple], runners: Sequence[Runner | None],
             writer: _Writer, bar) -> None:
    """Run the networks over the decoded batches, ``IN_FLIGHT`` at a time, and store what they give; an
    interrupted job keeps every batch its networks finished."""
    in_flight: deque[_Started] = deque()

    def collect(started: _Started) -> None:
        for j, rows, pending in started.parts:
            vectors = rounded(pending.result())  # as the store keeps them: a warm run gives what this one does
            writer.add(j, [job.keys[r] for r in rows], vectors)
            job.fill(j, rows, vectors)
        bar.update(started.posters)

    try:
        for batch, (decoded, failed) in _prefetched(batches, load):
            for row, reason in failed.items():
                job.fail(row, reason)
            in_flight.append(_Started(len(batch), [(j, rows, _submit(runners[j], pixels))
                                                   for j, (rows, pixels) in enumerate(decoded) if rows]))
            if len(in_flight) > IN_FLIGHT:
                collect(in_flight.popleft())
        while in_flight:
            collect(in_flight.popleft())
    finally:
        for started in in_flight:
            if started.finished():
                collect(started)
        writer.flush()


def embed(
    paths: Sequence[str | Path],
    spec: FeatureSpec,
    cache_dir: Path,
    engine: str = "auto",
    batch_size: int | None = None,
    mirror: bool = False,
    progress: bool = True,
    runners: Sequence[Runner | None] | None = None,
    use_cache: bool = True,
) -> Embeddings:
    """Embed poster files with each backbone of ``spec``, side by side, reusing and filling each
    backbone's on-disk cache (unless ``use_cache`` is off); a poster failing is NaN in every column.
    ``engine`` is resolved once for the whole job (``resolve_engine``): it decides the cache too,
    and ``batch_size`` where not given (``BATCH_SIZES``: int8 runs 1.1x faster at 32 than at 8).

    Each file is read and hashed once, and its key looked up in each backbone's store (only the rows of
    these keys are read); a poster missing from any backbone's cache is decoded
    once and resized to the input of each backbone that lacks it, and only those backbones run.
    ``runners`` (one per backbone) replace the networks ``engine`` would build.
    """
    start = time.perf_counter()
    cache_dir = Path(cache_dir)
    backbones = spec.backbones
    paths = [str(p) for p in paths]
    job = _Job(paths, *_read_and_hash(paths, ":mirror" if mirror else ""), spec)
    runners = list(runners or [None] * len(backbones))
    engine = resolve_engine(engine, backbones, cache_dir, len(job.paths))
    caches = [FeatureCache(cache_dir, b, engine == INT8) if use_cache else NoCache() for b in backbones]
    job.look_up(caches)
    build = [j for j in range(len(backbones))  # only for the backbones that run
             if runners[j] is None and any(need[j] for need in job.needs.values())]
    for j, runner in zip(build, make_runners([backbones[j] for j in build], cache_dir, engine)):
        runners[j] = runner
    # posters needing the same backbones side by side, so that each backbone gets full batches
    first = sorted(((rows[0], job.needs[key]) for key, rows in job.todo.items()), key=lambda item: item[1],
                   reverse=True)
    if first:
        size = batch_size or BATCH_SIZES.get(engine, 8)
        bar = progress_bar(len(first), f"embedding ({spec.name})", "poster", progress)
        load = lambda batch: _decode_batch(job.paths, batch, spec, mirror)  # noqa: E731
        _compute(job, [first[i:i + size] for i in range(0, len(first), size)], load, runners, _Writer(caches), bar)
        bar.close()
        for cache in caches:
            cache.compact()
    for path, reason in job.errors.items():
        log.warning("skipped %s: %s", path, reason)
    cached = sum(key is not None and not any(job.needs[key]) for key in job.keys)
    return Embeddings(job.paths, job.features, job.keys, job.errors, cached=cached, seconds=time.perf_counter() - start,
                      computed=sum(job.paths[i] not in job.errors for i, _ in first))


def embed_files(paths: Sequence[str | Path], backbone: Backbone, cache_dir: Path, runner: Runner | None = None,
                **options) -> Embeddings:
    """``embed`` with one backbone (``runner`` for it, or one built for ``options["engine"]``)."""
    return embed(paths, FeatureSpec((backbone,)), cache_dir, runners=[runner], **options)


def load_dataset(catalog_path: Path, images: Path | None, spec: FeatureSpec, cache: Path, progress: bool = True,
                 text: OcrSettings | None = None, engine: str = "auto") -> Dataset:
    """Read a catalogue and embed its posters (from the store where possible); with ``text``
    (OCR settings), also read the text printed on them (cached in the same folder), in
    ``ocr_workers()`` processes while the posters are embedded. Posters that cannot be read are
    left out (``embed`` warns about each)."""
    table = catalog.read_catalog(catalog_path, images)
    paths = table["path"].tolist()
    reading = _start_reading(paths, cache, text, progress) if text is not None else None
    try:
        emb = embed(paths, spec, cache, engine=engine, progress=progress)
    finally:
        found = reading.result() if reading is not None else None
    ok = emb.ok
    if not ok.any():
        raise DataError(f"{catalog_path}: none of the {len(table)} posters could be read")
    data = Dataset(table, emb.features, emb.keys).subset(ok)
    if found is not None:
        for row in np.flatnonzero(ok):
            if paths[row] in found.errors:  # embedded, but its text could not be read: predicted from the image
                log.warning("no text for %s: %s", paths[row], found.errors[paths[row]])
        data.texts = [found.texts[row] for row in np.flatnonzero(ok)]
    return data


def _start_reading(paths: list[str], cache: Path, text: OcrSettings, progress: bool):
    """``read_texts`` of ``paths`` in a background thread (its OCR in worker processes): a future."""
    from posterlens.features.ocr import ocr_workers, read_texts

    pool = ThreadPoolExecutor(1, thread_name_prefix="ocr")
    future = pool.submit(read_texts, paths, cache, text, progress=progress, workers=ocr_workers(), warn=False)
    pool.shutdown(wait=False)  # no more tasks; the one submitted runs on
    return future
