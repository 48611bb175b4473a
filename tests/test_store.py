"""The feature store's index: lookups read only their own rows, and survive crashes, damage, old caches and
several processes writing at once."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from posterlens.features import store
from posterlens.features.backbones import resolve

BACKBONE = replace(resolve(), feature_dim=8)


def keys(n: int, start: int = 0) -> list[str]:
    return [f"{i:064x}" for i in range(start, start + n)]  # like a SHA-256


def vectors(n: int, start: int = 0) -> np.ndarray:
    """Row ``i`` holds the embedding of key ``i``: the same in every process, exact in float16 (the store's
    precision): ``i``'s bytes, then quarters."""
    i = np.arange(start, start + n)[:, None]
    return np.concatenate([(i >> np.arange(0, 32, 8)) & 255, (i & 7) + np.arange(4) / 4], axis=1).astype(np.float32)


def cache(root: Path) -> store.FeatureCache:
    return store.FeatureCache(root, BACKBONE)


def chunks(root: Path) -> list[Path]:
    return sorted((root / "features" / BACKBONE.key).glob("*.safetensors"))


def add(writer: store.FeatureCache, n: int, start: int = 0) -> Path:
    """Add keys ``start`` to ``start + n``; the chunk file written."""
    before = set(writer.dir.glob("*.safetensors"))
    writer.add(keys(n, start), vectors(n, start))
    [written] = set(writer.dir.glob("*.safetensors")) - before
    return written


def assert_holds(found: dict[str, np.ndarray], start: int, stop: int) -> None:
    assert sorted(found) == keys(stop - start, start)
    np.testing.assert_array_equal(np.stack([found[k] for k in keys(stop - start, start)]), vectors(stop - start, start))


@pytest.fixture
def spy(monkeypatch):
    """The chunk files read, whole (``_index_file``: on open) or row by row (``_rows``: lookups)."""
    read: dict[str, list[str]] = {"whole": [], "rows": []}
    index_file, rows = store.FeatureCache._index_file, store.FeatureCache._rows
    monkeypatch.setattr(store.FeatureCache, "_index_file", lambda self, name: read["whole"].append(name)
                        or index_file(self, name))
    monkeypatch.setattr(store.FeatureCache, "_rows", lambda self, chunk, picks, out: read["rows"].append(chunk.name)
                        or rows(self, chunk, picks, out))
    return read


def test_lookup_returns_exactly_the_stored_vectors(tmp_path):
    writer = cache(tmp_path)
    writer.add(keys(5), vectors(5))
    writer.add(keys(7, 5), vectors(7, 5))
    found = cache(tmp_path).get(keys(12)[::-1] + ["not cached", keys(1, 3)[0]])
    assert_holds(found, 0, 12)
    assert all(v.dtype == np.float32 for v in found.values()) and len(cache(tmp_path)) == 12
    writer.add(keys(1, 3), vectors(1, 100))  # a key written twice: the latest chunk wins
    np.testing.assert_array_equal(cache(tmp_path).get(keys(1, 3))[keys(1, 3)[0]], vectors(1, 100)[0])
    assert len(cache(tmp_path)) == 12 and cache(tmp_path).get([]) == {}


def test_nan_and_infinite_embeddings_are_never_served(tmp_path, caplog):
    bad = vectors(3)
    bad[1, 2], bad[2, 0] = np.nan, np.inf
    cache(tmp_path).add(keys(3), bad)
    assert "not caching 2 embeddings with NaN or infinite values" in caplog.text
    assert list(cache(tmp_path).get(keys(3))) == keys(1)
    with pytest.raises(ValueError, match=r"expected \(2, 8\)"):
        cache(tmp_path).add(keys(2), np.zeros((2, 7), np.float32))
    folder = chunks(tmp_path)[0].parent  # a chunk with NaN and a matching checksum, as an old version wrote
    save_file({"features": bad}, str(folder / "old.safetensors"), metadata={"keys": ",".join(keys(3, 10)),
                                                                             "sha256": store._digest(keys(3, 10), bad)})
    caplog.clear()
    assert cache(tmp_path).get(keys(3, 10)) == {} and "NaN or infinite values" in caplog.text


def test_a_crash_between_chunk_and_index_is_reconciled_on_next_open(tmp_path, monkeypatch, spy):
    writer = cache(tmp_path)
    indexed = add(writer, 4)
    with monkeypatch.context() as crash:
        crash.setattr(store.FeatureCache, "_record", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            writer.add(keys(3, 4), vectors(3, 4))
    [unindexed] = set(chunks(tmp_path)) - {indexed}
    assert not list(tmp_path.rglob("*.tmp"))
    assert writer.get(keys(7)).keys() == set(keys(4))  # the index lacks the new chunk
    assert spy["whole"] == []
    reopened = cache(tmp_path)
    assert spy["whole"] == [unindexed.name]  # only the chunk the index lacks is read
    assert_holds(reopened.get(keys(7)), 0, 7)
    cache(tmp_path)
    assert len(spy["whole"]) == 1  # indexed once


def test_a_damaged_chunk_is_ignored_with_one_warning_and_its_posters_embedded_again(tmp_path, caplog):
    writer = cache(tmp_path)
    flipped, garbage, _ = add(writer, 4), add(writer, 4, 4), add(writer, 4, 8)
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0x40  # the last float of the last row
    flipped.write_bytes(bytes(data))
    garbage.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        found = cache(tmp_path).get(keys(12))
    assert_holds(found, 8, 12)
    assert caplog.text.count("ignoring damaged cache file") == 2 and "checksum mismatch" in caplog.text
    assert flipped.name in caplog.text and garbage.name in caplog.text
    caplog.clear()
    assert_holds(cache(tmp_path).get(keys(12)), 8, 12)
    assert caplog.text == ""  # marked in the index: no process reads them again
    cache(tmp_path).add(keys(8), vectors(8))  # embedded again
    assert_holds(cache(tmp_path).get(keys(12)), 0, 12)


def test_lookups_read_only_the_chunks_of_their_keys(tmp_path, caplog, spy):
    writer = cache(tmp_path)
    first, unrelated, last = (add(writer, 5, start) for start in (0, 5, 10))
    unrelated.write_bytes(b"damaged")
    spy["rows"].clear()
    found = cache(tmp_path).get(keys(5) + keys(2, 10))
    assert_holds({k: found[k] for k in keys(5)}, 0, 5)
    assert sorted(spy["rows"]) == sorted([first.name, last.name]) and spy["whole"] == []
    assert "damaged" not in caplog.text


def test_an_index_less_cache_is_migrated(tmp_path, caplog):
    folder = tmp_path / "features" / BACKBONE.key
    folder.mkdir(parents=True)
    for i, start in enumerate((0, 6, 12)):  # chunk files as the store wrote them before it had an index
        save_file({"features": vectors(6, start)}, str(folder / f"20240101000000-0000000{i}.safetensors"),
                  metadata={"keys": ",".join(keys(6, start)), "sha256": store._digest(keys(6, start), vectors(6, start))})
    (folder / "20240101000000-00000009.safetensors").write_bytes(b"cut short")
    migrated = cache(tmp_path)
    assert (folder / store.INDEX).exists() and caplog.text.count("ignoring damaged cache file") == 1
    assert_holds(migrated.get(keys(18)), 0, 18)
    assert len(cache(tmp_path)) == 18


def test_a_deleted_chunk_is_forgotten(tmp_path, caplog):
    writer = cache(tmp_path)
    add(writer, 3).unlink()
    add(writer, 3, 3)
    assert_holds(writer.get(keys(6)), 3, 6)  # the open cache finds the file gone
    reopened = cache(tmp_path)
    assert len(reopened) == 3 and list(reopened.get(keys(6))) == keys(3, 3) and "damaged" not in caplog.text


def test_compaction_merges_only_what_this_object_wrote(tmp_path, monkeypatch, spy):
    monkeypatch.setattr(store, "COMPACT_AFTER", 2)
    monkeypatch.setattr(store, "CHUNK_ROWS", 5)
    other = cache(tmp_path)
    other.add(keys(2, 100), vectors(2, 100))
    [theirs] = chunks(tmp_path)
    writer = cache(tmp_path)
    for start in range(0, 8, 2):
        writer.add(keys(2, start), vectors(2, start))
    writer.compact()
    assert len(chunks(tmp_path)) == 3 and theirs in chunks(tmp_path)  # 8 rows -> 5 + 3, and the other's
    reopened = cache(tmp_path)
    assert spy["whole"] == [] and len(reopened) == 10  # the merged files were indexed as they were written
    assert_holds(reopened.get(keys(8)), 0, 8)


def _write_shards(root: str, first: int, rows: int, n: int, start) -> None:
    """One of the concurrent writers: ``n`` chunks of ``rows`` keys from ``first``, a reader opening the cache
    now and then, and the chunks merged at the end."""
    store.COMPACT_AFTER = n // 2
    start.wait()  # all together
    writer = cache(Path(root))
    for j in range(n):
        row = first + j * rows
        writer.add(keys(rows, row), vectors(rows, row))
        if j % 5 == 4:
            assert_holds(cache(Path(root)).get(keys(rows, row)), row, row + rows)
    writer.compact()


def test_concurrent_writers_leave_every_key_indexed_and_readable(tmp_path):
    rows, n = 7, 40
    context = multiprocessing.get_context("spawn")  # as separate workers would: no state shared
    firsts = (0, rows * n // 2, rows * n)  # the first two overlap by half
    start = context.Barrier(len(firsts))
    workers = [context.Process(target=_write_shards, args=(str(tmp_path), first, rows, n, start)) for first in firsts]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    total = firsts[-1] + rows * n
    reopened = cache(tmp_path)
    assert len(reopened) == total
    assert_holds(reopened.get(keys(total)), 0, total)
    with sqlite3.connect(chunks(tmp_path)[0].parent / store.INDEX) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == len(chunks(tmp_path))


def test_chunks_are_written_in_float16_and_float32_ones_still_read(tmp_path, caplog):
    values = np.random.default_rng(0).normal(size=(3, BACKBONE.feature_dim)).astype(np.float32)
    writer = cache(tmp_path)
    writer.add(keys(3), values)
    [written] = chunks(tmp_path)
    assert written.name.endswith(".f16.safetensors")
    found = cache(tmp_path).get(keys(3))
    got = np.stack([found[k] for k in keys(3)])
    assert got.dtype == np.float32 and np.array_equal(got, store.rounded(values)) and not np.array_equal(got, values)
    assert np.abs(got - values).max() <= 1e-3 * np.abs(values).max()
    folder = tmp_path / "features" / BACKBONE.key
    save_file({"features": values}, str(folder / "20240101000000-00000001.safetensors"),  # a chunk from before
              metadata={"keys": ",".join(keys(3, 10)), "sha256": store._digest(keys(3, 10), values)})
    save_file({"features": values}, str(folder / "20240101000000-00000002.f16.safetensors"),  # says f16, holds f32
              metadata={"keys": ",".join(keys(3, 20)), "sha256": store._digest(keys(3, 20), values)})
    reopened = cache(tmp_path)
    old = reopened.get(keys(3, 10))
    assert np.array_equal(np.stack([old[k] for k in keys(3, 10)]), values)  # read as written, not rounded
    assert reopened.get(keys(3, 20)) == {} and "00000002.f16.safetensors" in caplog.text


def test_values_beyond_float16_are_not_stored(tmp_path, caplog):
    values = vectors(2)
    values[1, 0] = 1e6  # float16 holds up to 65504
    cache(tmp_path).add(keys(2), values)
    assert list(cache(tmp_path).get(keys(2))) == keys(1) and "NaN or infinite" in caplog.text
