"""Shared fixtures: the bundled sample and small catalogues built from it."""

from __future__ import annotations

import json
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


@pytest.fixture
def posters(tmp_path: Path, sample_dir: Path) -> list[Path]:
    """The first 10 sample posters by name, copied into tmp_path/posters."""
    folder = tmp_path / "posters"
    folder.mkdir()
    for path in sorted((sample_dir / "images").iterdir())[:10]:
        shutil.copy(path, folder)
    return sorted(folder.iterdir())


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


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory) -> Path:
    """One feature cache (and ONNX exports) for the whole test session; also the default cache,
    so that nothing is written to the user's home."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["POSTERLENS_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory, shared_cache):
    """A model trained once on the bundled sample, its 20% holdout kept out (``TrainResult``)."""
    from posterlens.workflows.train import TrainConfig, train

    out = tmp_path_factory.mktemp("model") / "model"
    config = TrainConfig(min_genre_count=10, refit=False, genre={"epochs": 10})
    return train(SAMPLE / "MovieGenre.csv", None, out, config, shared_cache, progress=False)


@pytest.fixture(scope="session")
def trained_model(trained) -> Path:
    """The directory of ``trained``."""
    return trained.model_dir


def _rewrite_config(model_dir: Path, change) -> None:
    """Edit config.json as an attacker would, digest recomputed so that only the schema can catch it."""
    from posterlens.models import directory as model_files

    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    change(config)
    config["digest"] = model_files._config_digest(config)
    path.write_text(json.dumps(config))


@pytest.fixture
def rewrite_config():
    """``rewrite_config(model_dir, change)``: ``change(config)`` applied to config.json, digest recomputed."""
    return _rewrite_config
