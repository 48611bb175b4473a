"""The package in layers: one home for each default, each rule and each split; the defects
the layout review found (seed, reading twice, int8 calibration posters)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose
from typer.testing import CliRunner

from posterlens.app.cli import app
from posterlens.data.fetch import FetchConfig
from posterlens.errors import SettingsError, UserError
from posterlens.workflows.config import TrainConfig

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "posterlens"
LAYERS = ["data", "features", "models", "workflows", "app"]  # each imports only those before it
runner = CliRunner()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("posterlens."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("posterlens."))
    return found


def test_each_layer_imports_only_the_layers_below():
    for rank, layer in enumerate(LAYERS):
        above = set(LAYERS[rank + 1:])
        for module in (PACKAGE / layer).glob("*.py"):
            assert not _imports(module) & above, f"{module.name} ({layer}) imports {_imports(module) & above}"


def test_no_module_is_over_500_lines_and_public_ones_declare_all():
    for module in PACKAGE.rglob("*.py"):
        lines = module.read_text().count("\n")
        assert lines <= 500, f"{module}: {lines} lines"
        if module.name not in ("__init__.py", "__main__.py") and not module.name.startswith("_"):
            assert "__all__" in module.read_text(), f"{module} has no __all__"


def test_workflows_and_models_take_data_and_splits_from_the_data_layer():
    for name in ("evaluate", "compare", "tune"):
        source = (PACKAGE / "workflows" / f"{name}.py").read_text()
        assert "posterlens.workflows.train import" not in source and "workflows import train" not in source
    for path in (PACKAGE / "models" / "pixels.py", PACKAGE / "models" / "text.py"):
        assert "workflows" not in _imports(path)


# --- settings: one default each, one table of rules ------------------------------------------

def test_train_cli_defaults_fall_through_to_train_config(monkeypatch, tmp_path):
    """``posterlens train`` with no options builds ``TrainConfig()``: the CLI restates no default."""
    import posterlens.features.embed as embed_module
    import posterlens.workflows.train as train_module

    seen = {}

    def fake_train(catalog, images, out, config, cache, progress=True, data=None, corrections=None):
        seen["config"] = config
        raise UserError("stop here")

    monkeypatch.setattr(embed_module, "load_dataset", lambda *a, **k: [])
    monkeypatch.setattr(train_module, "train", fake_train)
    result = runner.invoke(app, ["train", "-c", str(tmp_path / "x.csv"), "-o", str(tmp_path / "m")])
    assert result.exit_code == 2 and "stop here" in result.output
    assert seen["config"] == TrainConfig()
    result = runner.invoke(app, ["train", "-c", "x.csv", "-o", str(tmp_path / "m"), "--seed", "7", "--folds", "3"])
    assert dataclasses.replace(TrainConfig(), seed=7, folds=3) == seen["config"]


def test_fetch_cli_defaults_fall_through_to_fetch_config(monkeypatch, small_catalog, tmp_path):
    import posterlens.data.fetch as fetch_module

    seen = {}

    def fake_fetch(table, out, config, **kwargs):
        seen["config"] = config
        raise UserError("stop here")

    monkeypatch.setattr(fetch_module, "fetch_posters", fake_fetch)
    runner.invoke(app, ["fetch", "-c", str(small_catalog), "-o", str(tmp_path / "p")])
    assert seen["config"] == FetchConfig()


def test_dag_and_pipeline_take_their_defaults_from_the_dataclasses():
    from posterlens.app.pipeline import PipelineConfig

    defaults = {f.name: f.default for f in dataclasses.fields(PipelineConfig)}
    assert defaults["min_genre_count"] == TrainConfig.min_genre_count
    assert defaults["concurrency"] == FetchConfig.concurrency
    dag_file = Path(__file__).resolve().parents[1] / "dags" / "posterlens_pipeline.py"
    assert "dataclasses.fields(pipeline.PipelineConfig)" in dag_file.read_text()  # its params are built from them


def test_the_label_rule_defaults_are_stated_once():
    from posterlens.models.estimators import GenreClassifier
    from posterlens.models.fitted import RULE_DEFAULTS, LabelRule
    from posterlens.models.pixels import PixelCNN
    from posterlens.models.text import TextFusion

    for params in (GenreClassifier().get_params(), PixelCNN().get_params(), vars(LabelRule())):
        assert {k: params[k] for k in RULE_DEFAULTS} == RULE_DEFAULTS
    rule = TextFusion().rule_
    assert {k: getattr(rule, k) for k in RULE_DEFAULTS} == RULE_DEFAULTS


@pytest.mark.parametrize("change, message", [
    ({"genre": {"epochs": 10**9}}, "genre: epochs: 1000000000 is out of range"),
    ({"genre": {"hidden": 10**8}}, "genre: hidden: 100000000 is out of range"),
    ({"score": {"components": 0}}, "score: components: 0 is out of range"),
    ({"folds": 1}, "--folds: 1 is not a cross-validation"),
    ({"holdout": 1.5}, "--holdout: 1.5 is out of range"),
    ({"seed": True}, "--seed: expected a whole number"),
    ({"score_mode": "ranks"}, "--score-mode: 'ranks' is not one of regression, classes"),
    ({"genre": {"depth": 2}}, "unknown genre model setting(s) ['depth']"),
])
def test_train_config_rules(change, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        TrainConfig(**change)


def test_config_files_are_read_capped_and_checked(tmp_path):
    good = tmp_path / "best.json"
    good.write_text(json.dumps({"seed": 3, "genre": {"epochs": 5}}))
    assert TrainConfig(**TrainConfig.from_file(good)).genre_estimator().get_params()["seed"] == 3
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    big = tmp_path / "big.json"
    big.write_text(" " * 2_000_000 + "{}")
    for path, message in ((fifo, "not a regular file"), (deep, "nested deeper than"), (big, "over 1,000,000 bytes"),
                          (Path("/dev/zero"), "not a regular file")):
        with pytest.raises(SettingsError, match=message):
            TrainConfig.from_file(path)
    result = runner.invoke(app, ["train", "-c", "x.csv", "-o", str(tmp_path / "m"), "--config", str(deep)])
    assert result.exit_code == 2 and "nested deeper than" in result.output and "Traceback" not in result.output


# --- the seed reaches every estimator ----------------------------------------------------------

def _fit(seed: int, out: Path, cache: Path, sample_dir: Path):
    from posterlens.workflows.train import train

    config = TrainConfig(min_genre_count=10, holdout=0.0, seed=seed, genre={"epochs": 2, "calibration_folds": 2})
    return train(sample_dir / "MovieGenre.csv", None, out, config, cache, progress=False)


def test_same_seed_same_predictions_another_seed_other_score_weights(tmp_path, shared_cache, sample_dir):
    import posterlens

    first, again = _fit(1, tmp_path / "a", shared_cache, sample_dir), _fit(1, tmp_path / "b", shared_cache, sample_dir)
    other = _fit(2, tmp_path / "c", shared_cache, sample_dir)
    posters = sorted((sample_dir / "images").glob("*.jpg"))[:20]
    P = [posterlens.load(r.model_dir, shared_cache).predict(posters, warn=False) for r in (first, again)]
    genres = first.model.genres
    assert_allclose(P[0][genres].to_numpy(), P[1][genres].to_numpy(), atol=1e-6)
    assert_allclose(P[0]["score"].to_numpy(), P[1]["score"].to_numpy(), atol=1e-6)
    assert first.model.score_model.params["seed"] == 1 and other.model.score_model.params["seed"] == 2
    same = first.model.score_model.to_arrays()
    assert not np.allclose(same["kernel.components_"], other.model.score_model.to_arrays()["kernel.components_"])


# --- train reads the catalogue once and hashes each poster once --------------------------------

def test_train_reads_the_catalogue_once_and_hashes_each_poster_once(monkeypatch, small_catalog, tmp_path):
    import posterlens.data.catalog as catalog_module
    import posterlens.features.embed as embed_module

    reads, hashes = [], []
    real_read, real_hash = catalog_module.read_catalog, embed_module.content_hash
    monkeypatch.setattr(catalog_module, "read_catalog", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    monkeypatch.setattr(embed_module, "content_hash", lambda data: hashes.append(1) or real_hash(data))
    result = runner.invoke(app, ["train", "-c", str(small_catalog), "-o", str(tmp_path / "m"), "--min-genre-count", "1",
                                 "--holdout", "0", "--epochs", "1"])
    posters = len(list((small_catalog.parent / "images").glob("*.jpg")))
    assert len(reads) == 1, result.output
    assert len(hashes) == posters, result.output


# --- the int8 engine's calibration posters ship with the package -------------------------------

def test_int8_calibration_posters_are_package_data_or_auto_says_why(monkeypatch, caplog, tmp_path):
    from posterlens.features import engines, int8
    from posterlens.paths import PACKAGE_DIR

    assert int8.CALIBRATION_DIR.is_relative_to(PACKAGE_DIR)
    assert len(list(int8.CALIBRATION_DIR.glob("*.jpg"))) >= int8.CALIBRATION_POSTERS
    monkeypatch.setattr(engines, "CALIBRATION_DIR", tmp_path / "missing")
    monkeypatch.setattr(engines, "openvino_available", lambda: True)
    monkeypatch.setattr(engines, "_installed", lambda name: True)
    monkeypatch.setattr(engines, "_cpu_flags", lambda: frozenset({"avx512_vnni"}))
    engines._say_once.cache_clear()
    with caplog.at_level(logging.INFO, logger="posterlens.features.engines"):
        assert engines.resolve_engine("auto", posters=1000) == "openvino"
    assert "not openvino-int8 because the calibration posters are missing" in caplog.text
    monkeypatch.setattr(engines, "CALIBRATION_DIR", int8.CALIBRATION_DIR)
    assert engines.resolve_engine("auto", posters=1000) == engines.INT8


def test_errors_module_is_light_and_every_user_error_is_one():
    import subprocess
    import sys

    code = "import sys, posterlens.errors; print(sorted(m for m in ('numpy', 'pandas', 'torch') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
    errors = importlib.import_module("posterlens.errors")
    assert all(issubclass(getattr(errors, name), UserError) for name in errors.__all__)


def test_the_released_model_saved_before_the_layout_change_still_loads(sample_dir):
    """``config.json`` names classes, never module paths: a model directory saved by the flat package
    (the released one, built 2026-11-23) loads and predicts with the package in layers."""
    import posterlens
    from posterlens.models import directory
    from posterlens.paths import RELEASED_DIR

    config = json.loads((RELEASED_DIR / "config.json").read_text())
    named = [config["genre_model"]["class"], (config["score_model"] or {}).get("class")]
    assert named == ["GenreClassifier", "ScoreRegressor"]
    assert "posterlens." not in json.dumps({k: config[k] for k in ("genre_model", "score_model", "backbones")})
    model = directory.load(RELEASED_DIR)
    table = posterlens.load().predict(sorted((sample_dir / "images").glob("*.jpg"))[:3], warn=False)
    assert len(table) == 3 and table.attrs["genres"] == model.genres and table["score"].between(0, 10).all()
