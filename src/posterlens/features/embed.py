"""Poster embeddings: each backbone of a ``FeatureSpec`` side by side, through the feature store.

Each poster is read, hashed and decoded once for all backbones, then resized to each one's
input; posters found in the store are not decoded at all. Images are decoded in worker
threads while the network runs. ``load_dataset`` reads a catalogue and embeds it: the
``Dataset`` training, evaluation, tuning and comparison start from.
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
from posterlens.features.engines import BATCH_SIZES, INT8, Runner, make_runner, resolve_engine
from posterlens.features.store import FeatureCache, NoCache
from posterlens.progress import progress as progress_bar

if TYPE_CHECKING:
    from posterlens.features.ocr import OcrSettings

__all__ = ["Embeddings", "FeatureSpec", "embed", "embed_files", "load_dataset"]

log = logging.getLogger(__name__)

@dataclass
class Embeddings:
    """Features for a list of poster files; rows of files that failed are NaN."""

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
    paths = [str(p) for p in paths]
    backbones = spec.backbones
    engine = resolve_engine(engine, backbones, cache_dir, len(paths))
    batch_size = batch_size or BATCH_SIZES.get(engine, 8)
    caches = [FeatureCache(cache_dir, b, engine == INT8) if use_cache else NoCache() for b in backbones]
    keys, errors = _read_and_hash(paths, ":mirror" if mirror else "")
    distinct = list(dict.fromkeys(key for key in keys if key is not None))
    known = [cache.get(distinct) for cache in caches]  # index lookups: the cache's size does not matter
    ends = np.cumsum([b.feature_dim for b in backbones])
    columns = [slice(end - b.feature_dim, end) for b, end in zip(backbones, ends)]
    features = np.full((len(paths), spec.feature_dim), np.nan, dtype=np.float32)
    todo: dict[str, list[int]] = {}  # identical images are computed once
    needs: dict[str, tuple[bool, ...]] = {}  # which backbones lack each image
    for i, key in enumerate(keys):
        if key is None:
            continue
        for table, cols in zip(known, columns):
            if key in table:
                features[i, cols] = table[key]
        needs[key] = tuple(key not in table for table in known)
        if any(needs[key]):
            todo.setdefault(key, []).append(i)
    cached = sum(key is not None and not any(needs[key]) for key in keys)
    # posters needing the same backbones side by side, so that each backbone gets full batches
    first = sorted(((rows[0], needs[key]) for key, rows in todo.items()), key=lambda item: item[1], reverse=True)
    if first:
        runners = list(runners or [None] * len(backbones))  # built only for the backbones that run
        for j, backbone in enumerate(backbones):
            if runners[j] is None and any(need[j] for _, need in first):
                runners[j] = make_runner(backbone, cache_dir, engine)
        batches = [first[i:i + batch_size] for i in range(0, len(first), batch_size)]
        bar = progress_bar(len(first), f"embedding ({spec.name})", "poster", progress)
        load = lambda batch: _decode_batch(paths, batch, spec, mirror)  # noqa: E731
        for batch, (decoded, failed) in _prefetched(batches, load):
            for row, reason in failed.items():
                features[todo[keys[row]]] = np.nan  # columns from the other backbones' caches too
                errors.update((paths[r], reason) for r in todo[keys[row]])
            for runner, cache, cols, (rows, pixels) in zip(runners, caches, columns, decoded):
                if rows:
                    vectors = runner(pixels)
                    cache.add([keys[r] for r in rows], vectors)
                    for r, v in zip(rows, vectors):
                        features[todo[keys[r]], cols] = v
            bar.update(len(batch))
        bar.close()
        for cache in caches:
            cache.compact()
    for path, reason in errors.items():
        log.warning("skipped %s: %s", path, reason)
    return Embeddings(paths, features, keys, errors, computed=sum(paths[i] not in errors for i, _ in first),
                      cached=cached, seconds=time.perf_counter() - start)


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
