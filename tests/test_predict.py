"""Batch predictions in the original CSV formats, TTA, errors, and similar movies."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import posterlens
from posterlens import predict
from posterlens.cli import app


@pytest.fixture(scope="module")
def predictor(trained_model, shared_cache):
    return posterlens.load(trained_model, shared_cache)


@pytest.fixture
def folder(tmp_path, sample_dir):
    """Five real posters, a corrupt JPEG, a text file named .jpg and an empty file."""
    posters = sorted((sample_dir / "images").iterdir())[:5]
    for p in posters:
        shutil.copy(p, tmp_path)
    (tmp_path / "corrupt.jpg").write_bytes(posters[0].read_bytes()[:600] + bytes(2000))
    (tmp_path / "text.jpg").write_text("this is not a poster")
    (tmp_path / "empty.jpg").write_bytes(b"")
    return tmp_path


def test_csv_files_have_the_documented_columns(predictor, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    result = predictor.predict(predict.image_files(folder))
    predict.write(result, out)
    score = pd.read_csv(out / "predictions_score.csv")
    genre = pd.read_csv(out / "predictions_genre.csv")
    final = pd.read_csv(out / "predictions_final.csv")
    errors = pd.read_csv(out / "errors.csv")
    assert list(score.columns) == ["file", "label"]
    assert list(genre.columns) == ["file", "predicted_labels", "raw_probs"]
    assert list(final.columns) == ["file", "score", "predicted_labels", "raw_probs"]
    assert list(errors.columns) == ["file", "reason"]
    assert len(score) == len(genre) == len(final) == 5
    assert sorted(errors["file"].map(lambda f: f.rsplit("/", 1)[-1])) == ["corrupt.jpg", "empty.jpg", "text.jpg"]
    assert (score["label"] == score["label"].round(1)).all() and score["label"].between(0, 10).all()
    probs = json.loads(genre["raw_probs"][0])
    assert list(probs) == predictor.model.genres
    assert all(0 <= p <= 1 for p in probs.values())
    assert final.merge(score, on="file")["score"].equals(final.merge(score, on="file")["label"])


def test_one_label_rule_in_train_evaluate_and_predict(trained, predictor, sample_dir, shared_cache, tmp_path):
    from posterlens import catalog, metrics
    from posterlens.evaluate import evaluate
    from posterlens.train import load_dataset

    model = trained.model
    data = load_dataset(sample_dir / "MovieGenre.csv", None, model.features, shared_cache, progress=False)
    holdout = data.table["id"].isin(model.info["holdout_ids"]).to_numpy()
    expected = model.genre_model.predict(data.X[holdout])  # the estimator's own rule
    files = data.table["path"][holdout].tolist()
    result = predictor.predict(files)
    assert [[g for g, on in zip(model.genres, row) if on] for row in expected] == result.table["genres"].tolist()
    Y = catalog.genre_matrix(data.table[holdout], model.genres)
    direct = metrics.genre_metrics(Y, model.genre_proba(data.X[holdout]), expected)
    evaluated = evaluate(trained.model_dir, sample_dir / "MovieGenre.csv", None, tmp_path, shared_cache, progress=False)
    assert evaluated.metrics["genre"]["micro_f1"] == pytest.approx(direct["micro_f1"])
    assert evaluated.metrics["genre"]["macro_f1"] == pytest.approx(direct["macro_f1"])
    assert trained.validation["genre"]["micro_f1"] == pytest.approx(direct["micro_f1"])  # train's own holdout figures


def test_the_same_poster_twice_is_predicted_once(predictor, sample_dir):
    poster = sorted((sample_dir / "images").iterdir())[0]
    result = predictor.predict([poster, poster, str(poster)])
    assert len(result.table) == 1 and result.errors.empty


def test_tta_averages_the_poster_and_its_mirror(predictor, sample_dir):
    poster = sorted((sample_dir / "images").iterdir())[0]
    plain = predictor.predict([poster]).table["probabilities"][0]
    tta = predictor.predict([poster], tta=True).table["probabilities"][0]
    emb = predictor.embed([poster], mirror=True)
    mirrored = dict(zip(predictor.model.genres, predictor.model.genre_proba(emb.features)[0]))
    for g in plain:
        assert tta[g] == pytest.approx((plain[g] + mirrored[g]) / 2, abs=1e-5)
    assert tta != plain


def test_similar_movies_are_ordered_and_exclude_the_query(predictor, trained_model, sample_dir):
    training = pd.read_csv(trained_model / "training_set.csv")
    poster = sample_dir / "images" / f"{training['id'][0]}.jpg"
    found = predictor.similar(poster, k=5)
    assert list(found.columns) == ["id", "title", "genres", "score", "similarity"]
    assert len(found) == 5
    assert found["similarity"].is_monotonic_decreasing
    assert training["id"][0] not in set(found["id"])  # a poster is not its own neighbour
    # the order is the cosine order in the genre space
    emb = predictor.embed([poster])
    query = predictor.model.genre_proba(emb.features)[0]
    keys = dict(zip(training["id"], training["key"]))
    others = predictor.embed([sample_dir / "images" / f"{i}.jpg" for i in found["id"]])
    vectors = predictor.model.genre_proba(others.features)
    cosine = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    assert np.allclose(cosine, found["similarity"], atol=1e-4)
    assert all(i in keys for i in found["id"])


def test_predict_cli_with_similar_and_summary_table(trained_model, folder, tmp_path):
    result = CliRunner().invoke(app, ["predict", "--model", str(trained_model), "--images", str(folder),
                                      "--out", str(tmp_path / "o"), "--similar", "3"])
    assert result.exit_code == 0, result.output
    assert "Predictions" in result.output and "3 could not be read" in " ".join(result.output.split())
    final = pd.read_csv(tmp_path / "o" / "predictions_final.csv")
    assert list(final.columns)[-1] == "similar"
    assert (final["similar"].str.count(r" \| ") == 2).all()


def test_similar_cli_writes_csv(trained_model, sample_dir, tmp_path):
    poster = sorted((sample_dir / "images").iterdir())[3]
    result = CliRunner().invoke(app, ["similar", "--model", str(trained_model), "--image", str(poster), "--k", "4",
                                      "--out", str(tmp_path / "similar.csv")])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "similar.csv")) == 4


def test_evaluate_reports_similar_quality(trained_model, sample_dir, shared_cache, tmp_path):
    from posterlens.evaluate import evaluate

    metrics = evaluate(trained_model, sample_dir / "MovieGenre.csv", None, tmp_path, shared_cache, progress=False).metrics
    assert 0 <= metrics["similar"]["genre_precision_at_10"] <= 1
    assert 0 < metrics["similar"]["baseline"] < 1
