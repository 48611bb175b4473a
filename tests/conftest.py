"""Shared fixtures: the bundled sample and small catalogues built from it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def sample_rows() -> pd.DataFrame:
    return pd.read_csv(SAMPLE / "MovieGenre.csv", dtype=str, keep_default_na=False)


@pytest.fixture
def small_catalog(tmp_path: Path, sample_rows: pd.DataFrame) -> Path:
    """A MovieGenre.csv with 8 sample movies and their posters in tmp_path/images."""
    rows = sample_rows.head(8)
    images = tmp_path / "images"
    images.mkdir()
    for imdb in rows["imdbId"]:
        shutil.copy(SAMPLE / "images" / f"tt{int(imdb):07d}.jpg", images)
    path = tmp_path / "MovieGenre.csv"
    rows.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One feature cache (and ONNX export) for the whole test session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, shared_cache) -> Path:
    """A model trained once on the bundled sample (holdout 20%)."""
    from posterlens.train import TrainConfig, train

    out = tmp_path_factory.mktemp("model") / "model"
    train(SAMPLE / "MovieGenre.csv", None, out, TrainConfig(min_genre_count=10, epochs=10), shared_cache, progress=False)
    return out
