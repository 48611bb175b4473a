"""The feature store: each backbone's embeddings on disk, keyed by the hash of each image's bytes.

Each computed batch is written as its own small safetensors file with its SHA-256 (temporary
name, then rename), so an interrupted run loses nothing it had finished and a damaged chunk
only costs its own embeddings (ignored with a warning, computed again).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from posterlens.errors import OutputError
from posterlens.features.backbones import Backbone

__all__ = ["FeatureCache", "NoCache", "default_cache_dir", "COMPACT_AFTER"]

log = logging.getLogger(__name__)

COMPACT_AFTER = 64  # merge the cache's chunk files when there are more than this


def default_cache_dir() -> Path:
    """``$POSTERLENS_CACHE`` or ``~/.cache/posterlens``."""
    return Path(os.environ.get("POSTERLENS_CACHE", Path.home() / ".cache" / "posterlens"))



def _digest(keys: Sequence[str], vectors: np.ndarray) -> str:
    """SHA-256 of a chunk's keys and vectors."""
    import hashlib

    digest = hashlib.sha256(",".join(keys).encode())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Embeddings of one backbone, stored as chunk files ``<dir>/<backbone key>/*.safetensors``
    (``<backbone key>-int8`` for the int8 engine's)."""

    def __init__(self, root: Path, backbone: Backbone, int8: bool = False):
        self.dir = Path(root) / "features" / (backbone.key + ("-int8" if int8 else ""))
        self.failed = False  # a write failed: warned once, no more warnings
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(self.dir, err) from None
        self.dim = backbone.feature_dim

    def _chunks(self) -> list[Path]:
        return sorted(self.dir.glob("*.safetensors"))

    def load(self) -> dict[str, np.ndarray]:
        """Every cached embedding, by content key; a chunk that fails ``_check`` is ignored with a warning."""
        from safetensors import safe_open

        table: dict[str, np.ndarray] = {}
        for chunk in self._chunks():
            try:
                with safe_open(str(chunk), framework="numpy") as f:
                    meta, vectors = f.metadata() or {}, f.get_tensor("features")
                keys = self._check(meta, vectors)
            except Exception as err:  # a damaged chunk only costs its own embeddings: they are recomputed
                log.warning("ignoring damaged cache file %s (%s); its posters will be embedded again", chunk, err)
                continue
            table.update(zip(keys, vectors))
        return table

    def _check(self, meta: dict, vectors: np.ndarray) -> list[str]:
        """The chunk's keys, after checking its checksum, shape and values."""
        keys = meta["keys"].split(",")
        if vectors.shape != (len(keys), self.dim) or vectors.dtype != np.float32:
            raise ValueError(f"shape {vectors.shape} {vectors.dtype}, expected ({len(keys)}, {self.dim}) float32")
        if meta.get("sha256") != _digest(keys, vectors):
            raise ValueError("checksum mismatch")
        if not np.isfinite(vectors).all():
            raise ValueError("NaN or infinite values")
        return keys

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store embeddings atomically (a partial file never looks complete), with their checksum."""
        from safetensors.numpy import save_file

        if not keys:
            return
        from safetensors import SafetensorError

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        name = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tmp = self.dir / f".{name}.tmp"
        try:
            save_file({"features": vectors}, str(tmp), metadata={"keys": ",".join(keys), "sha256": _digest(keys, vectors)})
            os.replace(tmp, self.dir / f"{name}.safetensors")
        except (OSError, SafetensorError) as err:  # a full disk, a read-only cache: embed on, uncached
            if not self.failed:
                log.warning("cannot write to the feature cache %s (%s): going on without caching", self.dir, err)
            self.failed = True
        finally:
            tmp.unlink(missing_ok=True)

    def compact(self) -> None:
        """Merge chunk files into one when there are many."""
        chunks = self._chunks()
        if len(chunks) <= COMPACT_AFTER:
            return
        table = self.load()
        self.add(list(table), np.stack(list(table.values())))
        if self.failed:  # the merged file was not written: keep the chunks
            return
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
