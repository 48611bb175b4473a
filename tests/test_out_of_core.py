"""The heads fit from a memory-mapped embeddings file as they do from memory, without copying it."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from posterlens.models import estimators, rows, similar
from posterlens.models.estimators import GenreClassifier, ScoreRegressor
from posterlens.models.similar import SimilarIndex


def _data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` posters of ``dim`` features, 4 genres and a score that depend on them."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    Y = (X[:, :4] @ rng.normal(size=(4, 4)) + rng.normal(scale=1.0, size=(n, 4)) > 1.0).astype(np.float32)
    y = 6.0 + X[:, :3].sum(axis=1) * 0.4 + rng.normal(scale=0.3, size=n)
    return X, Y, y


def _on_disk(X: np.ndarray, path, dtype=np.float32, mode: str = "r") -> np.memmap:
    np.save(path, X.astype(dtype))
    return np.load(path, mmap_mode=mode)


@pytest.fixture(scope="module")
def data():
    return _data(600, 40)


def test_fits_from_a_memmap_match_fits_in_memory(data, tmp_path):
    X, Y, y = data
    mapped = _on_disk(X, tmp_path / "X.npy", mode="r+")  # writable: the fit must still leave it alone
    genre = dict(epochs=4, wd=0.1, lr=3e-2, calibration_folds=3)
    in_memory, from_disk = GenreClassifier(**genre).fit(X, Y), GenreClassifier(**genre).fit(mapped, Y)
    np.testing.assert_allclose(from_disk.predict_proba(mapped), in_memory.predict_proba(X), rtol=1e-5, atol=1e-6)
    score = dict(components=16, kernel_components=100)
    np.testing.assert_allclose(ScoreRegressor(**score).fit(mapped, y).predict(mapped),
                               ScoreRegressor(**score).fit(X, y).predict(X), rtol=1e-5)
    assert np.array_equal(np.load(tmp_path / "X.npy"), X)


def test_float16_on_disk_gives_nearly_the_same_models(data, tmp_path):
    X, Y, y = data
    half = _on_disk(X, tmp_path / "X16.npy", np.float16)
    genre = dict(epochs=4, wd=0.1, lr=3e-2, calibration_folds=3)
    P, P16 = GenreClassifier(**genre).fit(X, Y).predict_proba(X), GenreClassifier(**genre).fit(half, Y).predict_proba(half)
    assert np.abs(P16 - P).max() < 0.02
    score = dict(components=16, kernel_components=100)
    s, s16 = ScoreRegressor(**score).fit(X, y).predict(X), ScoreRegressor(**score).fit(half, y).predict(half)
    assert np.abs(s16 - s).max() < 0.05


def _peak_allocated(work) -> int:
    """Peak bytes numpy (and Python) allocated while ``work`` ran (tracemalloc)."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_fitting_from_a_memmap_never_copies_it(data, tmp_path, monkeypatch):
    genre = GenreClassifier(epochs=1, calibration_folds=2, calibration_posters=2000)
    score = ScoreRegressor(components=8, kernel_components=50)
    genre.fit(data[0], data[1]), score.fit(data[0], data[2])  # imports (fastai's) allocate too: done before measuring
    X, Y, y = _data(40_000, 128)
    mapped = _on_disk(X, tmp_path / "X.npy")
    del X
    for module in (estimators, rows):  # blocks of 1,024 rows: 2.5% of the posters
        monkeypatch.setattr(module, "ROWS", 1024)
    monkeypatch.setattr(estimators, "PCA_POSTERS", 4000)
    assert _peak_allocated(lambda: genre.fit(mapped, Y)) < mapped.nbytes / 4  # 14% measured; a copy of it would be 100%
    assert _peak_allocated(lambda: score.fit(mapped, y)) < mapped.nbytes / 4  # 16% measured


def test_calibration_uses_a_sample_of_calibration_posters_out_of_fold_posters(data):
    X, Y, _ = data
    model = GenreClassifier(epochs=2, calibration_folds=3, calibration_posters=150).fit(X, Y)
    (_, first_fold), = model.calibration_splits_
    assert len(model.oof_rows_) == 150 and np.array_equal(np.unique(model.oof_rows_), model.oof_rows_)
    assert np.isin(model.oof_rows_, first_fold).all()


def test_similar_index_built_in_blocks_holds_every_vector_centred_on_their_mean(monkeypatch):
    vectors = np.random.default_rng(0).random((50, 6)).astype(np.float32)
    movies = pd.DataFrame({"id": [str(i) for i in range(50)], "title": "", "genres": "", "score": 7.0,
                           "key": [str(i) for i in range(50)]})
    monkeypatch.setattr(similar, "BUILD_ROWS", 7)
    index = SimilarIndex.build(vectors, movies)
    np.testing.assert_allclose(index.centre, vectors.mean(axis=0), rtol=1e-6)
    assert index.index.get_current_count() == 50
    nearest = index.query(vectors, k=1)
    assert [found["id"].iloc[0] for found in nearest] == movies["id"].tolist()
