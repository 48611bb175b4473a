"""Poster embeddings with a pretrained backbone, cached on disk.

The cache is keyed by backbone and by the hash of each image's bytes, so a re-run only
reads and hashes files, and adding posters only computes the new ones. Each computed
batch is written as its own small safetensors file (temporary name, then rename), so an
interrupted run loses nothing it had finished.

Two engines run the same network: ONNX Runtime (default, about twice as fast on CPU) and
torch (``channels_last``, ``inference_mode``). Images are decoded in worker threads while
the network runs.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from posterlens.backbones import Backbone, create_model
from posterlens.images import PosterError, content_hash, decode, to_array

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]
COMPACT_AFTER = 64  # merge the cache's chunk files when there are more than this


def default_cache_dir() -> Path:
    """``$POSTERLENS_CACHE`` or ``~/.cache/posterlens``."""
    return Path(os.environ.get("POSTERLENS_CACHE", Path.home() / ".cache" / "posterlens"))


@dataclass
class Embeddings:
    """Features for a list of poster files; rows of files that failed are NaN."""

    paths: list[str]
    features: np.ndarray
    keys: list[str | None] = field(default_factory=list)  # content hash of each file
    errors: dict[str, str] = field(default_factory=dict)  # path -> reason
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the rows that hold a real embedding."""
        return ~np.isnan(self.features).any(axis=1)


class FeatureCache:
    """Embeddings of one backbone, stored as chunk files ``<dir>/<backbone key>/*.safetensors``."""

    def __init__(self, root: Path, backbone: Backbone):
        self.dir = Path(root) / "features" / backbone.key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dim = backbone.feature_dim

    def _chunks(self) -> list[Path]:
        return sorted(self.dir.glob("*.safetensors"))

    def load(self) -> dict[str, np.ndarray]:
        """Every cached embedding, by content key."""
        from safetensors.numpy import load_file
        from safetensors import safe_open

        table: dict[str, np.ndarray] = {}
        for chunk in self._chunks():
            try:
                with safe_open(str(chunk), framework="numpy") as f:
                    keys = f.metadata()["keys"].split(",")
                vectors = load_file(str(chunk))["features"]
            except Exception as err:  # a damaged chunk only costs its own embeddings
                log.warning("ignoring damaged cache file %s (%s)", chunk, err)
                continue
            table.update(zip(keys, vectors))
        return table

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store embeddings atomically (a partial file never looks complete)."""
        from safetensors.numpy import save_file

        if not keys:
            return
        name = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tmp = self.dir / f".{name}.tmp"
        save_file({"features": np.ascontiguousarray(vectors, dtype=np.float32)}, str(tmp),
                  metadata={"keys": ",".join(keys)})
        os.replace(tmp, self.dir / f"{name}.safetensors")

    def compact(self) -> None:
        """Merge chunk files into one when there are many."""
        chunks = self._chunks()
        if len(chunks) <= COMPACT_AFTER:
            return
        table = self.load()
        self.add(list(table), np.stack(list(table.values())))
        for chunk in chunks:
            chunk.unlink(missing_ok=True)


class NoCache:
    """Stands in for ``FeatureCache`` when embeddings should not be stored (one-off predictions)."""

    def load(self) -> dict[str, np.ndarray]:
        return {}

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        pass

    def compact(self) -> None:
        pass


def onnx_runner(backbone: Backbone, cache_dir: Path, threads: int | None = None) -> Runner:
    """ONNX Runtime session for the backbone, exported once into the cache."""
    import onnxruntime as ort

    path = Path(cache_dir) / "onnx" / f"{backbone.key}.onnx"
    if not path.exists():
        export_onnx(backbone, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"pixels": batch})[0]


def export_onnx(backbone: Backbone, path: Path) -> None:
    """Export the feature extractor to ONNX (batch dimension dynamic)."""
    import torch
    import warnings

    model = create_model(backbone)
    example = torch.zeros(1, 3, backbone.height, backbone.width)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(tmp), input_names=["pixels"], output_names=["features"],
                          dynamic_axes={"pixels": {0: "batch"}}, opset_version=17, dynamo=False)
    os.replace(tmp, path)


def torch_runner(backbone: Backbone) -> Runner:
    """The backbone in torch: ``channels_last`` and ``inference_mode``."""
    import torch

    model = create_model(backbone).to(memory_format=torch.channels_last)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            return model(x).float().numpy()

    return run


def make_runner(backbone: Backbone, cache_dir: Path, engine: str = "onnx") -> Runner:
    """The network that turns a normalised batch (N, 3, H, W) into features (N, D)."""
    if engine == "onnx":
        return onnx_runner(backbone, cache_dir)
    if engine == "torch":
        return torch_runner(backbone)
    raise ValueError(f"unknown engine {engine!r}: use onnx or torch")


def _read_and_hash(paths: Sequence[str], suffix: str) -> tuple[list[str | None], dict[str, str]]:
    keys: list[str | None] = []
    errors: dict[str, str] = {}
    for path in paths:
        try:
            keys.append(content_hash(Path(path).read_bytes()) + suffix)
        except OSError as err:
            keys.append(None)
            errors[path] = f"cannot read file ({err.strerror or err})"
    return keys, errors


def _decode_batch(paths: Sequence[str], backbone: Backbone, mirror: bool) -> tuple[list[int], np.ndarray, dict[str, str]]:
    """Decode a batch; returns the positions that worked, their pixels and the failures."""
    from PIL import ImageOps

    done, arrays, errors = [], [], {}
    for i, path in enumerate(paths):
        try:
            image = decode(path, Path(path).read_bytes(), (backbone.width, backbone.height))
            arrays.append(to_array(ImageOps.mirror(image) if mirror else image, backbone))
            done.append(i)
        except (PosterError, OSError) as err:
            errors[path] = getattr(err, "reason", str(err))
    pixels = np.stack(arrays) if arrays else np.zeros((0, 3, backbone.height, backbone.width), np.float32)
    return done, pixels, errors


def _prefetched(batches: list[list[int]], load: Callable[[list[int]], tuple], depth: int = 2) -> Iterator[tuple]:
    """Yield ``load(batch)`` for each batch, decoding the next ones in threads meanwhile."""
    with ThreadPoolExecutor(max_workers=depth) as pool:
        queue: deque[tuple[list[int], Future]] = deque()
        for batch in batches:
            queue.append((batch, pool.submit(load, batch)))
            if len(queue) > depth:
                b, fut = queue.popleft()
                yield b, fut.result()
        while queue:
            b, fut = queue.popleft()
            yield b, fut.result()


def embed_files(
    paths: Sequence[str | Path],
    backbone: Backbone,
    cache_dir: Path | None = None,
    engine: str = "onnx",
    batch_size: int = 32,
    mirror: bool = False,
    progress: bool = True,
    runner: Runner | None = None,
    use_cache: bool = True,
) -> Embeddings:
    """Embed poster files, reusing and filling the on-disk cache (unless ``use_cache`` is off)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    paths = [str(p) for p in paths]
    cache = FeatureCache(cache_dir, backbone) if use_cache else NoCache()
    keys, errors = _read_and_hash(paths, ":mirror" if mirror else "")
    known = cache.load()
    features = np.full((len(paths), backbone.feature_dim), np.nan, dtype=np.float32)
    todo: dict[str, list[int]] = {}  # identical images are computed once
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in known:
            features[i] = known[key]
        else:
            todo.setdefault(key, []).append(i)
    cached = sum(k is not None and k in known for k in keys)
    first = [rows[0] for rows in todo.values()]
    if first:
        runner = runner or make_runner(backbone, cache_dir, engine)
        batches = [first[i:i + batch_size] for i in range(0, len(first), batch_size)]
        bar = tqdm(total=len(first), desc=f"embedding ({backbone.name})", unit="poster", disable=not progress)
        load = lambda batch: _decode_batch([paths[i] for i in batch], backbone, mirror)  # noqa: E731
        for batch, (done, pixels, batch_errors) in _prefetched(batches, load):
            errors.update(batch_errors)
            if done:
                vectors = runner(pixels)
                rows = [batch[j] for j in done]
                cache.add([keys[r] for r in rows], vectors)
                for r, v in zip(rows, vectors):
                    features[todo[keys[r]]] = v
            bar.update(len(batch))
        bar.close()
        cache.compact()
    for path, reason in errors.items():
        log.warning("skipped %s: %s", path, reason)
    return Embeddings(paths, features, keys, errors, computed=len(first) - sum(paths[i] in errors for i in first),
                      cached=cached, seconds=time.perf_counter() - start)
