"""Training, the model directory and evaluation, on the bundled sample."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from posterlens import model as model_files
from posterlens.cli import app
from posterlens.evaluate import EvaluationError, evaluate
from posterlens.train import TrainConfig, load_dataset, train

GENRE_KEYS = {"micro_f1", "macro_f1", "samples_f1", "macro_map", "micro_map", "macro_roc_auc", "binary_accuracy",
              "hamming_loss", "jaccard", "subset_accuracy", "brier", "ece"}


def test_model_directory_is_safetensors_and_json(trained_model):
    names = {p.name for p in trained_model.iterdir()}
    assert {"config.json", "genre_head.safetensors", "score_head.safetensors", "training_curves.csv"} <= names
    assert not [n for n in names if n.endswith((".pkl", ".pt", ".pth"))]
    config = json.loads((trained_model / "config.json").read_text())
    for key in ("backbone", "genres", "thresholds", "score_mode", "training", "data_fingerprint", "posterlens_version"):
        assert key in config
    assert config["backbone"]["width"] == 224 and config["backbone"]["height"] == 320
    assert len(config["thresholds"]) == len(config["genres"])


def test_reloaded_model_predicts_the_same(trained_model, sample_dir, shared_cache):
    loaded = model_files.load(trained_model)
    data = load_dataset(sample_dir / "MovieGenre.csv", None, loaded.backbone, shared_cache, progress=False)
    again = model_files.load(trained_model)
    assert np.array_equal(loaded.genre_proba(data.X), again.genre_proba(data.X))
    assert np.array_equal(loaded.score(data.X), again.score(data.X))
    assert loaded.genre_proba(data.X).shape == (len(data.X), len(loaded.genres))


def test_thresholds_are_applied(trained_model):
    loaded = model_files.load(trained_model)
    P = np.tile(loaded.thresholds, (2, 1))
    P[1] -= 1e-4
    labels = loaded.genre_labels(P)
    assert labels[0].all() and not labels[1].any()


@pytest.mark.parametrize("damage", ["tamper", "delete"])
def test_damaged_model_directory_is_refused(trained_model, tmp_path, damage):
    copy = tmp_path / "model"
    shutil.copytree(trained_model, copy)
    weights = copy / "genre_head.safetensors"
    if damage == "tamper":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
        message = "genre_head.safetensors: checksum mismatch"
    else:
        weights.unlink()
        message = "genre_head.safetensors: missing"
    with pytest.raises(model_files.ModelError, match=message):
        model_files.load(copy)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(model_files.ModelError, match="not a posterlens model directory"):
        model_files.load(tmp_path)


def test_evaluate_writes_metrics_tables_figures_and_report(trained_model, sample_dir, shared_cache, tmp_path):
    result = evaluate(trained_model, sample_dir / "MovieGenre.csv", None, tmp_path, shared_cache, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    config = json.loads((trained_model / "config.json").read_text())
    assert saved["n_posters"] == len(config["holdout_ids"])  # only posters training never saw
    assert GENRE_KEYS <= set(saved["genre"])
    assert set(saved["genre"]["baselines"]) == {"top2_constant", "priors"}
    assert GENRE_KEYS <= set(saved["genre"]["baselines"]["priors"])
    assert {"mae", "rmse", "spearman", "baseline_mae"} <= set(saved["score"])
    for name in ("per_genre.csv", "confusions.csv", "training_curves.png", "reliability.png", "per_genre.png",
                 "scores.png", "genre_distribution.png", "sample_posters.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    page = result.report.read_text()
    assert "sample_posters.png" in page and "macro_map" in page


def test_evaluate_refuses_when_every_poster_was_seen(trained_model, shared_cache, tmp_path, sample_rows, sample_dir):
    config = json.loads((trained_model / "config.json").read_text())
    seen = sample_rows[~sample_rows["imdbId"].map(lambda i: f"tt{int(i):07d}").isin(config["holdout_ids"])]
    seen.to_csv(tmp_path / "seen.csv", index=False)
    with pytest.raises(EvaluationError, match="were used to train"):
        evaluate(trained_model, tmp_path / "seen.csv", sample_dir / "images", tmp_path / "r", shared_cache, progress=False)


def test_kfold_and_score_classes(sample_dir, shared_cache, tmp_path, caplog):
    config = TrainConfig(folds=2, score_mode="classes", min_genre_count=30, epochs=5, threshold_folds=2)
    with caplog.at_level(logging.WARNING):
        result = train(sample_dir / "MovieGenre.csv", None, tmp_path / "m", config, shared_cache, progress=False)
    assert "fewer than 30 training posters" in caplog.text
    assert all(count >= 30 for count in result.model.info["train_genre_counts"].values())
    assert set(result.cv["genre"]["macro_map"]) == {"mean", "std"}
    assert "mae" in result.cv["score"]
    loaded = model_files.load(tmp_path / "m")
    assert loaded.score_mode == "classes"
    scores = loaded.score(np.zeros((3, loaded.backbone.feature_dim), np.float32))
    assert set(np.round(scores, 1)) <= set(np.round(loaded.score_head.classes_, 1))


def test_train_and_evaluate_cli(sample_dir, shared_cache, tmp_path):
    runner = CliRunner()
    catalog = str(sample_dir / "MovieGenre.csv")
    trained = runner.invoke(app, ["train", "--catalog", catalog, "--out", str(tmp_path / "m"), "--cache", str(shared_cache),
                                  "--min-genre-count", "10", "--epochs", "5"])
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "m"), "--catalog", catalog,
                                    "--out", str(tmp_path / "r"), "--cache", str(shared_cache)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "report.html" in evaluated.output and (tmp_path / "r" / "metrics.json").is_file()
    bad = runner.invoke(app, ["train", "--catalog", catalog, "--out", str(tmp_path / "x"), "--cache", str(shared_cache),
                              "--score-mode", "stars"])
    assert bad.exit_code == 2 and "unknown score mode 'stars'" in bad.output
