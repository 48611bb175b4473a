"""The feature store: each backbone's embeddings on disk, keyed by the hash of each image's bytes.

Each computed batch is written as its own safetensors chunk file with its SHA-256 (temporary
name, then rename), then recorded in one transaction in the folder's index (``index.sqlite``,
SQLite in WAL mode: key -> chunk, row and a digest of the row). A lookup asks the index for its
keys only and reads only their rows from the chunk files, checking each row's digest, so its
cost grows with the keys asked for, not with the cache. A chunk on disk that the index
lacks (a crash between the rename and the transaction, or a cache from before the index) is
checked whole and indexed when the cache is next opened; a damaged chunk only costs its own
embeddings (ignored with one warning, computed again).

Embeddings are written as float16 (``STORED``: half the disk, 11.4 GB for a million posters of
the default features; the genre model's macro-mAP moved by at most 7e-5 when trained on them,
docs/scaling.md) in ``*.f16.safetensors`` files; float32 files from before are read as they are.
``rounded`` gives computed embeddings the precision of stored ones, so that a warm run returns
exactly what the cold one did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sqlite3
import struct
import time
import uuid
from operator import itemgetter
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence, TypeVar

import numpy as np

from posterlens.errors import OutputError
from posterlens.features.backbones import Backbone
from posterlens.features.int8 import RECIPE

__all__ = ["FeatureCache", "NoCache", "default_cache_dir", "rounded", "STORED", "COMPACT_AFTER", "CHUNK_ROWS", "INDEX"]

log = logging.getLogger(__name__)

COMPACT_AFTER = 64  # a cache object that wrote more chunk files than this merges them (``compact``)
CHUNK_ROWS = 4096  # rows of a merged chunk file
INDEX = "index.sqlite"  # the index's file in each backbone's folder (with its -wal and -shm files)
BUSY_SECONDS = 60.0  # how long a writer waits for another one's transaction before retrying
RETRIES = 5
_QUERY_KEYS = 999  # bound parameters in one ``id IN (...)``
_FLOAT = np.dtype("<f4")  # safetensors' F32: what lookups return, and what digests are taken over
STORED = np.dtype("<f2")  # safetensors' F16: what chunk files are written in
_SUFFIX = {STORED: ".f16.safetensors", _FLOAT: ".safetensors"}  # a chunk file's name says its dtype
_SAFETENSORS = {"F16": STORED, "F32": _FLOAT}
_READ = os.O_RDONLY | getattr(os, "O_BINARY", 0)
_PREADV = hasattr(os, "preadv")  # not on Windows
_SCHEMA = (
    "CREATE TABLE chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,"
    " rows INTEGER NOT NULL, offset INTEGER NOT NULL, damaged INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE keys (id BLOB PRIMARY KEY, chunk INTEGER NOT NULL, row INTEGER NOT NULL,"
    " digest BLOB NOT NULL) WITHOUT ROWID",
    "PRAGMA user_version = 1",
)
_T = TypeVar("_T")


def default_cache_dir() -> Path:
    """``$POSTERLENS_CACHE`` or ``~/.cache/posterlens``."""
    return Path(os.environ.get("POSTERLENS_CACHE", Path.home() / ".cache" / "posterlens"))


def _digest(keys: Sequence[str], vectors: np.ndarray) -> str:
    """SHA-256 of a chunk's keys and vectors."""
    digest = hashlib.sha256(",".join(keys).encode())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _index_key(key: str) -> bytes:
    """A key as the index holds it: its 128-bit BLAKE2b (a quarter of the text's size in the index)."""
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


def _row_digest(key: str, vector: np.ndarray) -> bytes:
    """64-bit BLAKE2b of a key and its little-endian float32 vector: what the index checks a row read against."""
    return hashlib.blake2b(key.encode() + vector.astype(_FLOAT, copy=False).tobytes(), digest_size=8).digest()


def _retry(work: Callable[[], _T]) -> _T:
    """``work()``, again after a short random pause while another process holds the index locked."""
    for attempt in range(RETRIES):
        try:
            return work()
        except sqlite3.OperationalError as err:
            busy = err.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or attempt + 1 == RETRIES:
                raise
            time.sleep(random.uniform(0.05, 0.2) * 2**attempt)
    raise AssertionError("unreachable")


def rounded(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as float32 at the precision they are stored in (``STORED``); beyond its range, infinite."""
    with np.errstate(over="ignore"):
        return np.asarray(vectors, dtype=_FLOAT).astype(STORED).astype(_FLOAT)


def _dtype_of(name: str) -> np.dtype:
    """The dtype a chunk file's name says its features are in."""
    return STORED if name.endswith(_SUFFIX[STORED]) else _FLOAT


def _read_at(fd: int, out: np.ndarray, offset: int) -> int:
    """Read into ``out`` from ``offset`` of a file: one ``os.preadv`` where the system has it; the bytes read."""
    if _PREADV:
        return os.preadv(fd, [out], offset)
    os.lseek(fd, offset, os.SEEK_SET)
    data = os.read(fd, out.nbytes)
    out.reshape(-1).view(np.uint8)[:len(data)] = np.frombuffer(data, np.uint8)
    return len(data)


class _Chunk(NamedTuple):
    name: str
    rows: int
    offset: int  # where its vectors start in the file
    damaged: bool


class FeatureCache:
    """Embeddings of one backbone, stored as chunk files ``<dir>/<backbone key>/*.safetensors``
    (``<backbone key>-<int8.RECIPE>`` for the int8 engine's) and found through ``<dir>/<backbone key>/index.sqlite``.
    Opening one indexes the chunk files the index lacks and forgets those gone from the folder."""

    def __init__(self, root: Path, backbone: Backbone, int8: bool = False):
        self.dir = Path(root) / "features" / (backbone.key + (f"-{RECIPE}" if int8 else ""))
        self._folder = str(self.dir)
        self.failed = False  # a write failed: warned once, no more warnings
        self.dim = backbone.feature_dim
        self._written: list[tuple[str, list[str]]] = []  # chunk files this object added: name, keys
        self._chunks: dict[int, _Chunk] = {}  # the index's chunk table, by id, as last read
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(self.dir, err) from None
        try:
            self._db: sqlite3.Connection | None = _retry(self._open)
            self._reconcile()
        except sqlite3.Error as err:  # a read-only or broken cache folder: embed on, uncached
            log.warning("cannot open the feature cache index %s (%s): going on without caching", self.dir / INDEX, err)
            self._db, self.failed = None, True

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.dir / INDEX, timeout=BUSY_SECONDS, isolation_level=None)
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode = WAL")  # readers never wait for writers
        db.execute("PRAGMA synchronous = NORMAL")  # a power cut can lose a commit, never consistency

        def create() -> None:
            if db.execute("PRAGMA user_version").fetchone()[0] == 0:  # another process may have just made it
                for statement in _SCHEMA:
                    db.execute(statement)

        if db.execute("PRAGMA user_version").fetchone()[0] == 0:
            self._transaction(create, db)
        return db

    def _transaction(self, work: Callable[[], object], db: sqlite3.Connection | None = None) -> None:
        """Run ``work`` in one write transaction (``BEGIN IMMEDIATE``: writers take turns), retried while busy."""
        db = db if db is not None else self._db

        def attempt() -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                work()
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        _retry(attempt)

    def _reconcile(self) -> None:
        """Index the chunk files the index lacks, and forget the chunks whose files are gone: the chunk
        table, then a listing of the folder (in this order: a file is renamed into place before it is
        indexed), then only the files that differ are read."""
        self._load_chunks()
        on_disk = {path.name for path in self.dir.glob("*.safetensors")}
        indexed = {chunk.name for chunk in self._chunks.values()}
        gone = sorted(indexed - on_disk)
        if gone:
            self._transaction(lambda: self._db.executemany("DELETE FROM chunks WHERE name = ?", [(n,) for n in gone]))
        new = sorted(on_disk - indexed)
        if len(new) > 1:
            log.info("indexing %d chunk files of %s", len(new), self.dir)
        for name in new:
            self._index_file(name)
        if gone or new:
            self._chunks.clear()
            self._load_chunks()

    def _load_chunks(self, ids: Sequence[int] = ()) -> None:
        """Read the chunk table (or these chunks' rows of it) into ``_chunks``."""
        query = "SELECT id, name, rows, offset, damaged FROM chunks"
        for start in range(0, len(ids), _QUERY_KEYS) if ids else [0]:
            part = list(ids[start:start + _QUERY_KEYS])
            where = f" WHERE id IN ({','.join('?' * len(part))})" if part else ""
            for chunk, name, rows, offset, damaged in _retry(lambda: self._db.execute(query + where, part).fetchall()):
                self._chunks[chunk] = _Chunk(name, rows, offset, bool(damaged))

    def _index_file(self, name: str) -> None:
        """Check a chunk file whole (checksum, shape, values) and index its rows, or record it as damaged."""
        from safetensors import safe_open

        path = self.dir / name
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta, vectors = f.metadata() or {}, f.get_tensor("features")
            keys = self._check(meta, vectors, name)
            offset = self._data_offset(path, len(keys), _dtype_of(name))
        except FileNotFoundError:  # merged away by another process meanwhile
            return
        except Exception as err:  # noqa: BLE001  a damaged chunk only costs its own embeddings
            log.warning("ignoring damaged cache file %s (%s); its posters will be embedded again", path, err)
            self._transaction(lambda: self._db.execute(
                "INSERT OR IGNORE INTO chunks (name, rows, offset, damaged) VALUES (?, 0, 0, 1)", (name,)))
            return
        digests = [_row_digest(k, v) for k, v in zip(keys, vectors.astype(_FLOAT))]
        self._transaction(lambda: self._record(name, offset, keys, digests))

    def _record(self, name: str, offset: int, keys: Sequence[str], digests: Sequence[bytes]) -> None:
        """Inside a transaction: index a chunk file's rows (unless indexed already or removed meanwhile);
        a key indexed before now points here (the latest chunk wins)."""
        if self._db.execute("SELECT 1 FROM chunks WHERE name = ?", (name,)).fetchone() or not (self.dir / name).exists():
            return
        chunk = self._db.execute("INSERT INTO chunks (name, rows, offset) VALUES (?, ?, ?)",
                                 (name, len(keys), offset)).lastrowid
        self._db.executemany("INSERT OR REPLACE INTO keys (id, chunk, row, digest) VALUES (?, ?, ?, ?)",
                             [(_index_key(key), chunk, row, digest) for row, (key, digest) in enumerate(zip(keys, digests))])

    def _check(self, meta: dict, vectors: np.ndarray, name: str) -> list[str]:
        """The chunk's keys, after checking its checksum, shape, dtype (as its name says) and values."""
        keys = meta["keys"].split(",")
        dtype = _dtype_of(name)
        if vectors.shape != (len(keys), self.dim) or vectors.dtype != dtype:
            raise ValueError(f"shape {vectors.shape} {vectors.dtype}, expected ({len(keys)}, {self.dim}) {dtype}")
        if meta.get("sha256") != _digest(keys, vectors):
            raise ValueError("checksum mismatch")
        if not np.isfinite(vectors).all():
            raise ValueError("NaN or infinite values")
        return keys

    def _data_offset(self, path: Path, rows: int, dtype: np.dtype) -> int:
        """Where the ``features`` tensor's bytes start in a safetensors file (8-byte header length, JSON header)."""
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 1 << 30:
                raise ValueError(f"header of {size} bytes")
            info = json.loads(fh.read(size))["features"]
        begin, end = info["data_offsets"]
        if (_SAFETENSORS.get(info["dtype"]) != dtype or info["shape"] != [rows, self.dim]
                or end - begin != rows * self.dim * dtype.itemsize):
            raise ValueError(f"features {info['dtype']} {info['shape']}, expected {dtype} [{rows}, {self.dim}]")
        return 8 + size + begin

    def get(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached embedding of each of ``keys`` the cache holds: an index query each 999 keys, then
        only their rows are read, each checked against its digest. A chunk whose rows fail (or
        that cannot be read) is marked damaged in the index with one warning: its posters are
        missing, so embedded again."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        for _ in range(2):  # once more for keys whose chunk was merged away (``compact``) since the query
            if self._db is None or not wanted:
                break
            wanted = self._read_rows(self._locate(wanted), found)
        return found

    def _locate(self, keys: list[str]) -> dict[int, list[tuple[str, int, bytes]]]:
        """The indexed rows of ``keys`` by chunk id: (key, row, digest)."""
        located: dict[int, list[tuple[str, int, bytes]]] = {}
        for start in range(0, len(keys), _QUERY_KEYS):
            part = {_index_key(key): key for key in keys[start:start + _QUERY_KEYS]}
            query = f"SELECT id, chunk, row, digest FROM keys WHERE id IN ({','.join('?' * len(part))})"
            for ident, chunk, row, digest in _retry(lambda: self._db.execute(query, list(part)).fetchall()):
                located.setdefault(chunk, []).append((part[ident], row, digest))
        unknown = [chunk for chunk in located if chunk not in self._chunks]
        if unknown:  # indexed by another process since this one read the chunk table
            self._load_chunks(unknown)
        return located

    def _read_rows(self, located: dict[int, list[tuple[str, int, bytes]]], found: dict[str, np.ndarray]) -> list[str]:
        """Read the located rows into ``found``, chunk by chunk, then check each against its digest;
        the keys whose chunk file is gone."""
        gone: list[str] = []
        vectors = np.empty((sum(map(len, located.values())), self.dim), _FLOAT)
        read: list[tuple[int, str, bytes]] = []  # chunk, key and digest of each row of ``vectors``
        failed: dict[int, str] = {}  # damaged chunks, why
        for chunk, items in located.items():
            info = self._chunks.get(chunk)
            if info is None or info.damaged:  # a row left behind by a forgotten chunk, or a damaged one
                continue
            items.sort(key=itemgetter(1))
            try:
                part = np.empty((len(items), self.dim), _dtype_of(info.name))
                self._rows(info, [row for _, row, _ in items], part)
                vectors[len(read):len(read) + len(items)] = part
            except FileNotFoundError:
                del self._chunks[chunk]  # read again if the index still has it
                gone += [key for key, _, _ in items]
                continue
            except (OSError, ValueError) as err:
                failed[chunk] = str(err)
                continue
            read += [(chunk, key, digest) for key, _, digest in items]
        vectors = vectors[:len(read)]
        for (chunk, key, digest), vector in zip(read, vectors):
            if _row_digest(key, vector) != digest:
                failed.setdefault(chunk, "checksum mismatch")
        for i in np.flatnonzero(~np.isfinite(vectors).all(axis=1)):  # only where the index was built from such
            failed.setdefault(read[i][0], "NaN or infinite values")
        found.update((key, vector) for (chunk, key, _), vector in zip(read, vectors) if chunk not in failed)
        for chunk, reason in failed.items():
            self._damaged(chunk, reason)
        return gone

    def _rows(self, chunk: _Chunk, rows: list[int], out: np.ndarray) -> None:
        """Read rows ``rows`` (ascending) of a chunk file into ``out``, each run of consecutive rows in one
        read: only the bytes asked for are read."""
        if rows[0] < 0 or rows[-1] >= chunk.rows:
            raise ValueError(f"row {rows[-1]} of {chunk.rows}")
        size = out.itemsize * self.dim
        fd = os.open(f"{self._folder}/{chunk.name}", _READ)
        try:
            first = 0
            for i in range(1, len(rows) + 1):
                if i == len(rows) or rows[i] != rows[i - 1] + 1:  # a run ends
                    if _read_at(fd, out[first:i], chunk.offset + rows[first] * size) != (i - first) * size:
                        raise ValueError("file cut short")
                    first = i
        finally:
            os.close(fd)

    def _damaged(self, chunk: int, reason: str) -> None:
        """Warn about a damaged chunk and mark it in the index, so that no process reads it again."""
        log.warning("ignoring damaged cache file %s (%s); its posters will be embedded again",
                    self.dir / self._chunks[chunk].name, reason)
        self._chunks[chunk] = self._chunks[chunk]._replace(damaged=True)
        try:
            self._transaction(lambda: self._db.execute("UPDATE chunks SET damaged = 1 WHERE id = ?", (chunk,)))
        except sqlite3.Error as error:  # still ignored in this call; warned about again in the next
            log.debug("cannot mark %s damaged: %s", self._chunks[chunk].name, error)

    def __len__(self) -> int:
        """The number of keys the index holds in undamaged chunks."""
        if self._db is None:
            return 0
        query = "SELECT COUNT(*) FROM keys WHERE chunk IN (SELECT id FROM chunks WHERE damaged = 0)"
        return _retry(lambda: self._db.execute(query).fetchone()[0])

    def _write_chunk(self, keys: Sequence[str], vectors: np.ndarray) -> tuple[str, int]:
        """Write a chunk file atomically (a partial file never looks complete): its name and data offset."""
        from safetensors.numpy import save_file

        stem = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tmp, name = self.dir / f".{stem}.tmp", stem + _SUFFIX[STORED]
        try:
            save_file({"features": vectors.astype(STORED)}, str(tmp),
                      metadata={"keys": ",".join(keys), "sha256": _digest(keys, vectors)})
            offset = self._data_offset(tmp, len(keys), STORED)
            os.replace(tmp, self.dir / name)
        finally:
            tmp.unlink(missing_ok=True)
        return name, offset

    def _write_failed(self, what: str, err: Exception) -> None:
        if not self.failed:
            log.warning("cannot %s the feature cache %s (%s): going on without caching", what, self.dir, err)
        self.failed = True

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store embeddings (``rounded``): the chunk file atomically, with its checksum, then its rows in the
        index in one transaction. Rows with NaN or infinite values (or beyond float16's range) are not stored
        (warned about)."""
        if not len(keys):
            return
        vectors = np.ascontiguousarray(rounded(vectors))
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"embeddings of shape {vectors.shape}, expected ({len(keys)}, {self.dim})")
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            log.warning("not caching %d embeddings with NaN or infinite values", (~finite).sum())
            keys, vectors = [k for k, ok in zip(keys, finite) if ok], np.ascontiguousarray(vectors[finite])
        name = self._store(keys, vectors) if len(keys) else None
        if name is not None:
            self._written.append((name, list(keys)))

    def _store(self, keys: Sequence[str], vectors: np.ndarray) -> str | None:
        """Write a chunk file and index it; its name (None where it could not be written: warned about once).
        A chunk written but not indexed is indexed when the cache is next opened."""
        from safetensors import SafetensorError

        try:
            name, offset = self._write_chunk(keys, vectors)
        except (OSError, SafetensorError) as err:  # a full disk, a read-only cache: embed on, uncached
            self._write_failed("write to", err)
            return None
        if self._db is not None:
            digests = [_row_digest(k, v) for k, v in zip(keys, vectors)]
            try:
                self._transaction(lambda: self._record(name, offset, keys, digests))
            except sqlite3.Error as err:
                self._write_failed("index", err)
        return name

    def compact(self) -> None:
        """Merge the chunk files this object added, when more than ``COMPACT_AFTER``, into files of up to
        ``CHUNK_ROWS`` rows: it costs what this object wrote, never the rest of the cache, and no other
        process merges the same files. Each merged file is indexed as it is written (its keys now point
        to it); then the old files are forgotten and removed in one transaction."""
        if len(self._written) <= COMPACT_AFTER or self._db is None:
            return
        written, self._written = self._written, []
        table = self.get(key for _, keys in written for key in keys)
        keys = list(table)
        for start in range(0, len(keys), CHUNK_ROWS):
            part = keys[start:start + CHUNK_ROWS]
            if self._store(part, np.stack([table[k] for k in part])) is None:
                return  # the old chunks stay, indexed as they were

        def forget() -> None:
            self._db.executemany("DELETE FROM chunks WHERE name = ?", [(name,) for name, _ in written])
            for name, _ in written:  # under the write lock: no other process indexes them again
                (self.dir / name).unlink(missing_ok=True)

        try:
            self._transaction(forget)
        except (sqlite3.Error, OSError) as err:  # unremoved files stay indexed; removed ones are forgotten on open
            self._write_failed("index", err)


class NoCache:
    """Stands in for ``FeatureCache`` when embeddings should not be stored (one-off predictions)."""

    def get(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        return {}

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        pass

    def compact(self) -> None:
        pass
