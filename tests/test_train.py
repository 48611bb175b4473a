"""Training, the model directory and evaluation, on the bundled sample."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from posterlens.app.cli import app
from posterlens.features.backbones import DEFAULT_FEATURES
from posterlens.models import directory as model_files
from posterlens.workflows.evaluate import EvaluationError, evaluate
from posterlens.workflows.train import TrainConfig, load_dataset, train

GENRE_KEYS = {"micro_f1", "macro_f1", "samples_f1", "macro_map", "micro_map", "macro_roc_auc", "binary_accuracy",
              "hamming_loss", "jaccard", "subset_accuracy", "brier", "ece"}


def test_model_directory_is_safetensors_and_json(trained_model):
    names = {p.name for p in trained_model.iterdir()}
    assert {"config.json", "genre_model.safetensors", "score_model.safetensors", "training_curves.csv"} <= names
    assert not [n for n in names if n.endswith((".pkl", ".pt", ".pth", ".tmp"))]
    config = json.loads((trained_model / "config.json").read_text())
    for key in ("backbones", "genres", "genre_model", "score_model", "score_mode", "training", "validation",
                "evaluated_on", "data_fingerprint", "posterlens_version", "digest"):
        assert key in config
    assert [b["name"] for b in config["backbones"]] == list(DEFAULT_FEATURES)
    assert config["genre_model"]["class"] == "GenreClassifier"
    assert config["evaluated_on"] == "20% holdout (seed 42)"


def test_reloaded_model_predicts_like_the_model_that_was_saved(trained, sample_dir, shared_cache):
    loaded = model_files.load(trained.model_dir)
    data = load_dataset(sample_dir / "MovieGenre.csv", None, loaded.features, shared_cache, progress=False)
    np.testing.assert_allclose(loaded.genre_proba(data.X), trained.model.genre_proba(data.X), rtol=1e-6)
    np.testing.assert_allclose(loaded.score(data.X), trained.model.score(data.X), rtol=1e-5)
    assert np.array_equal(loaded.genre_labels(loaded.genre_proba(data.X)),
                          trained.model.genre_model.predict(data.X))
    assert loaded.genre_proba(data.X).shape == (len(data.X), len(loaded.genres))


def test_predicted_genres_per_poster_track_the_truth(trained):
    validation = trained.validation["genre"]
    assert 1 <= validation["genres_per_poster"] <= trained.model.genre_model.max_labels
    assert validation["genres_per_poster"] < 1.5 * validation["true_genres_per_poster"]


@pytest.mark.parametrize("damage", ["tamper", "delete"])
def test_damaged_model_directory_is_refused(trained_model, tmp_path, damage):
    copy = tmp_path / "model"
    shutil.copytree(trained_model, copy)
    weights = copy / "genre_model.safetensors"
    if damage == "tamper":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
        message = "genre_model.safetensors: checksum mismatch"
    else:
        weights.unlink()
        message = "genre_model.safetensors: missing"
    with pytest.raises(model_files.ModelError, match=message):
        model_files.load(copy)


HOSTILE_CONFIGS = {
    "import a module": (lambda c: c["backbones"].__setitem__(0, {"name": "efficientnet_lite0", "weights": "evil_pkg:x.pth"}),
                        "weights must be a file listed"),
    "write outside": (lambda c: c["backbones"].__setitem__(0, {"name": "../../../../tmp/x"}), "backbone"),
    "unknown class": (lambda c: c["genre_model"].__setitem__("class", "os.system"), "genre_model"),
    "bad number": (lambda c: c["genre_model"]["params"].__setitem__("max_labels", -3), "out of range"),
    "bad type": (lambda c: c["genre_model"]["params"].__setitem__("epochs", "20; rm -rf /"), "must be a number"),
    "odd name": (lambda c: c["score_model"]["params"].__setitem__("__class__", 1), "not a parameter name"),
    "bad arrays": (lambda c: c["genre_model"]["params"].__setitem__("max_labels", 1.5), "does not fit"),
    "path as file": (lambda c: c["files"].__setitem__("../outside.txt", "0" * 64), "plain file names"),
    "genre shapes": (lambda c: c["genres"].append("Extra"), "shapes do not fit"),
}


@pytest.mark.parametrize("attack", list(HOSTILE_CONFIGS))
def test_hostile_model_config_is_refused_in_one_line(trained_model, tmp_path, attack, monkeypatch, rewrite_config):
    import sys

    change, message = HOSTILE_CONFIGS[attack]
    copy = tmp_path / "model"
    shutil.copytree(trained_model, copy)
    (copy / "evil_pkg").mkdir()
    (copy / "evil_pkg" / "__init__.py").write_text("import pathlib; pathlib.Path(__file__).with_name('RAN').touch()")
    monkeypatch.syspath_prepend(str(copy))
    rewrite_config(copy, change)
    before = set(tmp_path.parent.iterdir())
    with pytest.raises(model_files.ModelError, match=message) as caught:
        model_files.load(copy)
    assert "\n" not in str(caught.value)
    assert "evil_pkg" not in sys.modules and not (copy / "evil_pkg" / "RAN").exists()
    assert set(tmp_path.parent.iterdir()) == before  # nothing written beside the model


def test_edited_config_without_a_new_digest_is_refused(trained_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(trained_model, copy)
    config = json.loads((copy / "config.json").read_text())
    config["genres"][0] = "Renamed"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(model_files.ModelError, match="digest mismatch"):
        model_files.load(copy)


def test_failed_retrain_leaves_the_previous_model_byte_identical(trained_model, sample_dir, shared_cache, tmp_path,
                                                                   monkeypatch):
    from posterlens.workflows import train as training

    copy = tmp_path / "model"
    shutil.copytree(trained_model, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_files, "save_arrays", disk_full)
    config = TrainConfig(min_genre_count=10, holdout=0.0, genre={"epochs": 2, "calibration_folds": 2})
    with pytest.raises(model_files.ModelError, match="No space left on device"):
        training.train(sample_dir / "MovieGenre.csv", None, copy, config, shared_cache, progress=False)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directory left behind
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
    config = TrainConfig(folds=2, score_mode="classes", min_genre_count=30, genre={"epochs": 5, "calibration_folds": 2})
    with caplog.at_level(logging.WARNING):
        result = train(sample_dir / "MovieGenre.csv", None, tmp_path / "m", config, shared_cache, progress=False)
    assert "fewer than 30 training posters" in caplog.text
    assert all(count >= 30 for count in result.model.info["train_genre_counts"].values())
    assert set(result.validation["genre"]["macro_map"]) == {"mean", "std"}
    assert "mae" in result.validation["score"]
    assert result.model.info["n_train"] == 240 and result.model.info["evaluated_on"] == "2-fold cross-validation"
    loaded = model_files.load(tmp_path / "m")
    assert loaded.score_mode == "classes"
    scores = loaded.score(np.zeros((3, loaded.features.feature_dim), np.float32))
    assert set(np.round(scores, 1)) <= set(np.round(loaded.score_model.classes_, 1))


def test_train_and_evaluate_cli(sample_dir, shared_cache, tmp_path):
    runner = CliRunner()
    catalog = str(sample_dir / "MovieGenre.csv")
    trained = runner.invoke(app, ["train", "--catalog", catalog, "--out", str(tmp_path / "m"), "--cache", str(shared_cache),
                                  "--min-genre-count", "10", "--epochs", "5", "--no-refit"])
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "m"), "--catalog", catalog,
                                    "--out", str(tmp_path / "r"), "--cache", str(shared_cache)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "report.html" in evaluated.output and (tmp_path / "r" / "metrics.json").is_file()
    bad = runner.invoke(app, ["train", "--catalog", catalog, "--out", str(tmp_path / "x"), "--cache", str(shared_cache),
                              "--score-mode", "stars"])
    assert bad.exit_code == 2 and "stars" in bad.output


@pytest.mark.parametrize("options, message", [(["--epochs", "0"], "--epochs"), (["--folds", "-1"], "--folds"),
                                              (["--backbone", "../../x"], "unknown backbone")])
def test_train_cli_refuses_bad_options_in_one_line(sample_dir, shared_cache, tmp_path, options, message):
    result = CliRunner().invoke(app, ["train", "--catalog", str(sample_dir / "MovieGenre.csv"), "--out",
                                      str(tmp_path / "m"), "--cache", str(shared_cache), *options])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_refit_uses_every_poster_and_records_the_holdout_figures(sample_dir, shared_cache, tmp_path):
    config = TrainConfig(min_genre_count=10, genre={"epochs": 2, "calibration_folds": 2})
    result = train(sample_dir / "MovieGenre.csv", None, tmp_path / "m", config, shared_cache, progress=False)
    assert result.model.info["n_train"] == 240 and result.model.info["holdout_ids"] == []
    assert 40 <= result.validation["n_test"] <= 56 and "macro_map" in result.validation["genre"]
