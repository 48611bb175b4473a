"""Predictions: the DataFrame API, the original CSV formats, TTA, errors, similar movies and the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import posterlens
from posterlens.app import outputs
from posterlens.app.cli import app
from posterlens.data.images import scan_folder
from posterlens.models.directory import ModelError
from posterlens.models.trust_settings import DOMAIN_SHARE
from posterlens.workflows import predict
from posterlens.workflows.predict import TRUST_COLUMNS


@pytest.fixture(scope="module")
def predictor(trained_model, shared_cache, sample_dir):
    return posterlens.load(trained_model, shared_cache, posters=sample_dir / "images")


@pytest.fixture(scope="module")
def posters(sample_dir):
    return sorted((sample_dir / "images").iterdir())


@pytest.fixture
def folder(tmp_path, posters):
    """Five real posters, a corrupt JPEG, a text file named .jpg and an empty file."""
    for p in posters[:5]:
        shutil.copy(p, tmp_path)
    (tmp_path / "corrupt.jpg").write_bytes(posters[0].read_bytes()[:600] + bytes(2000))
    (tmp_path / "text.jpg").write_text("this is not a poster")
    (tmp_path / "empty.jpg").write_bytes(b"")
    return tmp_path


def test_predict_returns_a_readable_dataframe(predictor, posters):
    table = predictor.predict(posters[0])
    genres = predictor.model.genres
    assert list(table.columns) == ["file", "genres", "score", *TRUST_COLUMNS, *genres]
    assert table["file"].tolist() == [str(posters[0])]
    row = table.iloc[0]
    assert row["score_low"] < row["score"] < row["score_high"] and 0 < row["genre_confidence"] < 1
    assert 0 <= row["domain_score"] <= 1 and row["in_domain"] == (row["domain_score"] >= DOMAIN_SHARE)
    assert set(table["genres"][0]) <= set(genres)
    assert table[genres].to_numpy().min() >= 0 and table[genres].to_numpy().max() <= 1
    assert table.head().equals(table) and table.attrs["errors"].empty
    assert "file" in repr(table.head())


def test_every_kind_of_image_is_accepted(predictor, posters):
    data = posters[1].read_bytes()
    pixels = np.asarray(Image.open(posters[1]).convert("RGB"))
    assert len(predictor.predict(np.stack([pixels, pixels]))) == 2  # an (N, H, W, 3) array: N images
    table = predictor.predict([posters[1], str(posters[2]), data, Image.fromarray(pixels), pixels])
    assert table["file"].tolist() == [str(posters[1]), str(posters[2]), "<image 2>", "<image 3>", "<image 4>"]
    genres = predictor.model.genres
    P = table[genres].to_numpy()
    np.testing.assert_allclose(P[2], P[0], atol=1e-6)  # the same bytes as the file
    np.testing.assert_allclose(P[4], P[3], atol=1e-6)  # an array and the PIL image of it
    assert table["score"].notna().all()


def test_in_memory_images_are_not_cached(predictor, posters, shared_cache):
    chunks = lambda: sorted(shared_cache.glob("features/*/*.safetensors"))  # noqa: E731
    before = chunks()
    flipped = np.asarray(Image.open(posters[7]).convert("RGB"))[::-1].copy()  # never seen before
    assert len(predictor.predict(flipped)) == 1
    assert chunks() == before


def test_unreadable_images_are_listed_and_warned_about(predictor, folder):
    with pytest.warns(UserWarning, match="4 of 9 images could not be read"):
        table = predictor.predict([*scan_folder(folder), np.zeros((4, 4), np.float64)])
    errors = table.attrs["errors"]
    assert list(errors.columns) == ["file", "reason"] and len(table) == 5
    names = [f.rsplit("/", 1)[-1] for f in errors["file"]]
    assert names == ["corrupt.jpg", "empty.jpg", "text.jpg", "<image 8>"]


def test_repr_says_what_it_is(predictor, trained_model):
    text = repr(predictor)
    assert str(trained_model) in text and "efficientnet_lite0+efficientnet_lite2" in text
    assert f"{len(predictor.model.genres)} genres" in text
    assert f"trained on {predictor.model.info['n_train']} posters" in text and "micro-F1" in text


def test_load_without_a_path_uses_the_released_model(trained_model, tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "released_model_dir", lambda: tmp_path / "released")
    with pytest.raises(ModelError, match="no released model in this installation: pass --model DIR"):
        posterlens.load()
    monkeypatch.setattr(predict, "released_model_dir", lambda: trained_model)
    assert predict.model_dir_or_released(None) == trained_model


def test_csv_files_have_the_documented_columns(predictor, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    result = predictor.predict(scan_folder(folder), warn=False)
    outputs.write(result, out)
    score = pd.read_csv(out / "predictions_score.csv")
    genre = pd.read_csv(out / "predictions_genre.csv")
    final = pd.read_csv(out / "predictions_final.csv")
    errors = pd.read_csv(out / "errors.csv")
    assert list(score.columns) == ["file", "label", "score_low", "score_high"]
    assert list(genre.columns) == ["file", "predicted_labels", "raw_probs", "genre_confidence", "domain_score", "in_domain"]
    assert list(final.columns) == ["file", "score", "score_low", "score_high", "predicted_labels", "raw_probs",
                                   "genre_confidence", "domain_score", "in_domain"]
    assert (final["score_low"] <= final["score"]).all() and (final["score"] <= final["score_high"]).all()
    assert final["in_domain"].dtype == bool and final["genre_confidence"].between(0, 1).all()
    assert list(errors.columns) == ["file", "reason"]
    assert len(score) == len(genre) == len(final) == 5
    assert sorted(errors["file"].map(lambda f: f.rsplit("/", 1)[-1])) == ["corrupt.jpg", "empty.jpg", "text.jpg"]
    assert (score["label"] == score["label"].round(1)).all() and score["label"].between(0, 10).all()
    probs = json.loads(genre["raw_probs"][0])
    assert list(probs) == predictor.model.genres
    assert probs == {g: round(float(p), 4) for g, p in zip(predictor.model.genres, result[predictor.model.genres].iloc[0])}
    assert final.merge(score, on="file")["score"].equals(final.merge(score, on="file")["label"])
    outputs.merge_files(out)  # the DAG's way: the same final table from the two part files
    assert pd.read_csv(out / "predictions_final.csv").equals(final)


def test_one_label_rule_in_train_evaluate_and_predict(trained, predictor, sample_dir, shared_cache, tmp_path):
    from posterlens.data import catalog
    from posterlens.workflows import metrics
    from posterlens.workflows.evaluate import evaluate
    from posterlens.workflows.train import load_dataset

    model = trained.model
    data = load_dataset(sample_dir / "MovieGenre.csv", None, model.features, shared_cache, progress=False)
    holdout = data.table["id"].isin(model.info["holdout_ids"]).to_numpy()
    expected = model.genre_model.predict(data.X[holdout])  # the estimator's own rule
    files = data.table["path"][holdout].tolist()
    result = predictor.predict(files)
    assert [[g for g, on in zip(model.genres, row) if on] for row in expected] == result["genres"].tolist()
    Y = catalog.genre_matrix(data.table[holdout], model.genres)
    direct = metrics.genre_metrics(Y, model.genre_proba(data.X[holdout]), expected)
    evaluated = evaluate(trained.model_dir, sample_dir / "MovieGenre.csv", None, tmp_path, shared_cache, progress=False)
    assert evaluated.metrics["genre"]["micro_f1"] == pytest.approx(direct["micro_f1"])
    assert evaluated.metrics["genre"]["macro_f1"] == pytest.approx(direct["macro_f1"])
    assert trained.validation["genre"]["micro_f1"] == pytest.approx(direct["micro_f1"])  # train's own holdout figures


def test_the_same_poster_twice_is_predicted_once(predictor, posters):
    result = predictor.predict([posters[0], posters[0], str(posters[0])])
    assert len(result) == 1 and result.attrs["errors"].empty


def test_a_changed_file_is_embedded_again(predictor, posters, tmp_path):
    poster = tmp_path / "poster.jpg"
    shutil.copy(posters[0], poster)
    first = predictor.predict(poster)
    shutil.copy(posters[1], poster)
    second = predictor.predict(poster)
    genres = predictor.model.genres
    np.testing.assert_allclose(second[genres].to_numpy(), predictor.predict(posters[1])[genres].to_numpy(), atol=1e-6)
    assert not np.allclose(first[genres].to_numpy(), second[genres].to_numpy())


def test_tta_averages_the_poster_and_its_mirror(predictor, posters):
    genres = predictor.model.genres
    plain = predictor.predict(posters[0])[genres].to_numpy()[0]
    tta = predictor.predict(posters[0], tta=True)[genres].to_numpy()[0]
    emb = predictor.embed([posters[0]], mirror=True)
    mirrored = predictor.model.genre_proba(emb.features)[0]
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-5)
    assert not np.allclose(tta, plain)


def test_similar_movies_are_ordered_and_exclude_the_query(predictor, trained_model, sample_dir):
    training = pd.read_csv(trained_model / "training_set.csv")
    poster = sample_dir / "images" / f"{training['id'][0]}.jpg"
    found = predictor.similar(poster, k=5)
    assert list(found.columns) == ["id", "title", "genres", "score", "similarity", "poster"]
    assert len(found) == 5
    assert [Path(p).name for p in found["poster"]] == [f"{i}.jpg" for i in found["id"]]  # from --posters
    assert found["similarity"].is_monotonic_decreasing
    assert training["id"][0] not in set(found["id"])  # a poster is not its own neighbour
    # the order is the cosine order in the genre space, centred on the training posters' mean
    centre = predictor.index.centre
    emb = predictor.embed([poster])
    query = predictor.model.genre_proba(emb.features)[0] - centre
    keys = dict(zip(training["id"], training["key"]))
    others = predictor.embed([sample_dir / "images" / f"{i}.jpg" for i in found["id"]])
    vectors = predictor.model.genre_proba(others.features) - centre
    cosine = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    assert np.allclose(cosine, found["similarity"], atol=1e-4)
    assert all(i in keys for i in found["id"])
    from_bytes = predictor.similar(poster.read_bytes(), k=5)  # the same poster, excluded too; embedded alone, not
    assert list(from_bytes["id"]) == list(found["id"])  # in a batch, so its float16 features may differ by an ulp
    np.testing.assert_allclose(from_bytes["similarity"], found["similarity"], atol=1e-4)


def test_similar_movies_have_their_posters_from_the_folder_the_caller_names(trained_model, shared_cache, sample_dir):
    poster = sorted((sample_dir / "images").iterdir())[0]
    found = posterlens.load(trained_model, shared_cache, posters=sample_dir / "images").similar(poster, k=3)
    assert [p.rsplit("/", 1)[-1] for p in found["poster"]] == [f"{i}.jpg" for i in found["id"]]
    assert (posterlens.load(trained_model, shared_cache).similar(poster, k=3)["poster"] == "").all()


def test_predict_cli_with_similar_and_summary_table(trained_model, folder, tmp_path):
    result = CliRunner().invoke(app, ["predict", "-m", str(trained_model), "-i", str(folder),
                                      "-o", str(tmp_path / "o"), "--similar", "3"], env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    assert "Predictions" in result.output and "3 could not be read" in " ".join(result.output.split())
    table = [line for line in result.output.splitlines() if line[:1] in "┏┃┡│└"]
    assert len(table) > 5 and all(len(line) <= 60 for line in table)  # the table wraps to the terminal
    final = pd.read_csv(tmp_path / "o" / "predictions_final.csv")
    assert list(final.columns)[-1] == "similar"
    assert (final["similar"].str.count(r" \| ") == 2).all()


def test_predict_cli_catalogue_wide_with_the_released_model(trained_model, small_catalog, tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "released_model_dir", lambda: trained_model)
    result = CliRunner().invoke(app, ["predict", "-c", str(small_catalog), "-o", str(tmp_path / "o"), "--wide"])
    assert result.exit_code == 0, result.output
    final = pd.read_csv(tmp_path / "o" / "predictions_final.csv")
    genres = list(pd.read_csv(tmp_path / "o" / "predictions_genre.csv")["raw_probs"].map(json.loads)[0])
    assert list(final.columns) == ["file", "id", "title", "score", "score_low", "score_high", "predicted_labels",
                                   "raw_probs", "genre_confidence", "domain_score", "in_domain", *genres]
    catalogue = pd.read_csv(small_catalog)
    assert sorted(final["title"]) == sorted(catalogue["Title"])
    assert final[genres].to_numpy().max() <= 1


def test_predict_cli_fails_when_nothing_is_predicted(trained_model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    result = CliRunner().invoke(app, ["predict", str(bad), "-m", str(trained_model), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "0 posters predicted, 1 could not be read" in " ".join(result.output.split())


def test_similar_cli_writes_csv_into_the_out_folder(trained_model, sample_dir, tmp_path):
    poster = sorted((sample_dir / "images").iterdir())[3]
    result = CliRunner().invoke(app, ["similar", "-m", str(trained_model), "-i", str(poster), "-k", "4",
                                      "-o", str(tmp_path / "similar")])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "similar" / "similar.csv")) == 4


def test_similar_cli_unreadable_poster_is_one_line(trained_model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    result = CliRunner().invoke(app, ["similar", "-m", str(trained_model), "-i", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == f"error: {bad}: not an image (Pillow cannot identify it)"


def test_evaluate_reports_similar_quality(trained_model, sample_dir, shared_cache, tmp_path):
    from posterlens.workflows.evaluate import evaluate

    metrics = evaluate(trained_model, sample_dir / "MovieGenre.csv", None, tmp_path, shared_cache, progress=False).metrics
    assert 0 <= metrics["similar"]["genre_precision_at_10"] <= 1
    assert 0 < metrics["similar"]["baseline"] < 1


def test_a_folder_scan_reports_what_is_not_a_poster(tmp_path, sample_dir):
    """A FIFO, or a folder named like a poster, is listed in errors.csv with why; it never hangs the scan."""
    folder = tmp_path / "posters"
    folder.mkdir()
    shutil.copy(sorted((sample_dir / "images").glob("*.jpg"))[0], folder / "good.jpg")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "dir.jpg").mkdir()
    (folder / "notes.txt").write_text("not a poster")
    result = CliRunner().invoke(app, ["predict", "-i", str(folder), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "1 poster predicted, 2 could not be read" in " ".join(result.output.split())
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    reasons = dict(zip(errors["file"].map(lambda f: Path(f).name), errors["reason"]))
    assert set(reasons) == {"pipe.jpg", "dir.jpg"}
    assert "FIFO" in reasons["pipe.jpg"] and "folder" in reasons["dir.jpg"]
