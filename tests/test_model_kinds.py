"""Models of what the data holds: a folder of ``Title_(Year)_7.1.jpg`` posters (scores only) trains a
score-only model, in both score modes; a catalogue without scores trains a genre-only model. Each
predicts, evaluates, serves and runs in the pipeline the DAG wires."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import posterlens
from posterlens.app.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def score_folder(tmp_path_factory, sample_dir) -> Path:
    """The bundled posters renamed as the original project's data: ``Title_(Year)_7.1.jpg``."""
    folder = tmp_path_factory.mktemp("scores")
    rows = pd.read_csv(sample_dir / "MovieGenre.csv", dtype=str, keep_default_na=False, encoding="latin-1")
    for row in rows.itertuples(index=False):
        title = re.sub(r"[^A-Za-z0-9()]+", "_", row.Title).strip("_")
        shutil.copy(sample_dir / "images" / f"tt{int(row.imdbId):07d}.jpg", folder / f"{title}_{float(row[3]):.1f}.jpg")
    return folder


@pytest.fixture(scope="module", params=["regression", "classes"])
def score_model(request, score_folder, tmp_path_factory, shared_cache) -> Path:
    out = tmp_path_factory.mktemp("score-model") / "model"
    result = runner.invoke(app, ["train", "-c", str(score_folder), "-o", str(out), "--no-refit",
                                 "--score-mode", request.param, "--epochs", "3", "--cache", str(shared_cache)])
    assert result.exit_code == 0, result.output
    assert f"score only: {request.param}" in " ".join(result.output.split())
    return out


def test_a_score_folder_trains_a_score_only_model(score_model):
    config = json.loads((score_model / "config.json").read_text())
    assert config["genre_model"] is None and config["genres"] == [] and config["score_model"]["class"] in (
        "ScoreRegressor", "ScoreClassifier")
    assert not (score_model / "genre_model.safetensors").exists()


def test_a_score_only_model_predicts_the_original_score_file(score_model, score_folder, tmp_path):
    out = tmp_path / "predictions"
    result = runner.invoke(app, ["predict", "-m", str(score_model), "-i", str(score_folder), "-o", str(out), "-k", "3"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["errors.csv", "predictions_final.csv", "predictions_score.csv"]
    scores = pd.read_csv(out / "predictions_score.csv")
    assert list(scores.columns) == ["file", "label", "score_low", "score_high", "domain_score", "in_domain"]
    assert len(scores) == 240 and scores["label"].between(0, 10).all() and (scores["score_low"] <= scores["label"]).all()
    final = pd.read_csv(out / "predictions_final.csv")
    assert list(final.columns) == ["file", "score", "score_low", "score_high", "domain_score", "in_domain", "similar"] and final["similar"].str.count(r" \| ").eq(2).all()
    found = posterlens.load(score_model).similar(sorted(score_folder.iterdir())[0], k=5)
    assert len(found) == 5 and found["similarity"].is_monotonic_decreasing


def test_a_score_only_model_is_evaluated_on_scores_beside_the_mean(score_model, score_folder, tmp_path):
    result = runner.invoke(app, ["evaluate", "-m", str(score_model), "-c", str(score_folder), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["genre"] is None and metrics["kind"] == "score only"
    assert {"mae", "spearman", "baseline_mae"} <= set(metrics["score"])
    assert ("accuracy" in metrics["score"]) == (metrics["score"]["mode"] == "classes")
    page = (tmp_path / "report.html").read_text()
    assert "it predicts no genres" in page and 'id="per-genre"' not in page


def test_explain_says_a_score_only_model_has_no_genres(score_model, score_folder, tmp_path):
    poster = sorted(score_folder.iterdir())[0]
    result = runner.invoke(app, ["explain", "-m", str(score_model), "-i", str(poster), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "score-only model" in result.output and "Traceback" not in result.output


def test_a_score_only_model_serves(score_model, score_folder):
    from posterlens.app import serve

    with TestClient(serve.create_app(posterlens.load(score_model))) as client:
        assert client.get("/api/health").status_code == 200
        poster = sorted(score_folder.iterdir())[0].read_bytes()
        answer = client.post("/api/predict", files={"image": ("p.jpg", poster, "image/jpeg")}).json()
        assert answer["kind"] == "score only" and answer["genres"] == [] and 0 <= answer["score"] <= 10
        assert len(answer["similar"]) == serve.SIMILAR
        refused = client.post("/api/explain", files={"image": ("p.jpg", poster, "image/jpeg")})
        assert refused.status_code == 422 and refused.json()["error"] == "no_genre_model"


def test_the_pipeline_runs_on_a_score_folder(score_folder, tmp_path, shared_cache):
    from posterlens.app.pipeline import PipelineConfig, run

    summary = run(PipelineConfig(catalog=str(score_folder), images=str(score_folder), out=str(tmp_path),
                                 cache=str(shared_cache), epochs=2))
    assert summary["macro_map"] is None and summary["score_mae"] > 0 and summary["test_images"] == 48
    assert summary["fetch"] == {"no_url": 240}


def test_a_catalogue_without_scores_trains_a_genre_only_model(sample_dir, tmp_path, shared_cache):
    rows = pd.read_csv(sample_dir / "MovieGenre.csv", dtype=str, keep_default_na=False, encoding="latin-1")
    rows["IMDB Score"] = ""
    catalogue = tmp_path / "MovieGenre.csv"
    rows.to_csv(catalogue, index=False)
    model, images = tmp_path / "model", str(sample_dir / "images")
    result = runner.invoke(app, ["train", "-c", str(catalogue), "-i", images, "-o", str(model), "--no-refit",
                                 "--min-genre-count", "10", "--epochs", "3"])
    assert result.exit_code == 0 and "no score model" in " ".join(result.output.split()), result.output
    out = tmp_path / "predictions"
    assert runner.invoke(app, ["predict", "-m", str(model), "-i", images, "-o", str(out)]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["errors.csv", "predictions_final.csv", "predictions_genre.csv"]
    result = runner.invoke(app, ["evaluate", "-m", str(model), "-c", str(catalogue), "-i", images, "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["score"] is None and metrics["genre"]["macro_map"] > 0


def test_a_catalogue_with_neither_genres_nor_scores_says_so(tmp_path, sample_dir):
    folder = tmp_path / "posters"
    folder.mkdir()
    for poster in sorted((sample_dir / "images").glob("*.jpg"))[:12]:
        shutil.copy(poster, folder / f"poster_{poster.stem}.jpg")
    result = runner.invoke(app, ["train", "-c", str(folder), "-o", str(tmp_path / "m")])
    assert result.exit_code == 2 and "nothing to learn" in result.output
    embedded = runner.invoke(app, ["embed", "-c", str(folder)])  # embedding needs no labels
    assert embedded.exit_code == 0, embedded.output
