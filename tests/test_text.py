"""Poster text: OCR cached by image hash, bad files skipped with a reason, text model round trips."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
from numpy.testing import assert_allclose

from posterlens.features import ocr
from posterlens.models import text


@pytest.fixture
def posters(posters):
    """Four of the sample posters (real OCR reads each in about 0.5 s)."""
    return posters[:4]


class FakeReader:
    """Stands in for rapidocr: 'words' from the image size, counts the calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, rgb: np.ndarray) -> str:
        self.calls += 1
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        return f"poster {rgb.shape[1]}x{rgb.shape[0]} mean{int(rgb.mean())}"


def test_cached_by_content_and_damaged_chunks_are_read_again(posters, tmp_path, caplog):
    reader = FakeReader()
    first = ocr.read_texts(posters, tmp_path / "cache", reader=reader, batch_size=2, progress=False)
    assert reader.calls == len(posters) and first.computed == len(posters) and all(first.texts)
    copy = tmp_path / "copy.jpg"  # same bytes, other name: read from the cache
    shutil.copy(posters[0], copy)
    again = ocr.read_texts([*posters, copy], tmp_path / "cache", reader=reader, progress=False)
    assert reader.calls == len(posters) and again.cached == len(posters) + 1
    assert again.texts == [*first.texts, first.texts[0]]
    chunks = sorted((tmp_path / "cache" / "text").glob("*/*.json"))
    body = json.loads(chunks[0].read_text())
    body["texts"][0] = "tampered"
    chunks[0].write_text(json.dumps(body))
    with caplog.at_level(logging.WARNING):
        fixed = ocr.read_texts(posters, tmp_path / "cache", reader=reader, progress=False)
    assert "ignoring damaged text cache file" in caplog.text
    assert reader.calls == len(posters) + 2 and fixed.texts == first.texts  # the chunk held 2 posters
    assert not list((tmp_path / "cache" / "text").glob("*/.*.tmp"))


def test_unreadable_posters_are_skipped_with_a_reason(posters, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.jpg").write_text("not an image")
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "folder.jpg").mkdir()
    fifo = bad / "pipe.jpg"
    if hasattr(os, "mkfifo"):
        os.mkfifo(fifo)
    paths = [posters[0], bad / "notes.jpg", bad / "empty.jpg", bad / "folder.jpg", bad / "missing.jpg",
             *([fifo] if fifo.exists() else [])]
    result = ocr.read_texts(paths, tmp_path / "cache", reader=FakeReader(), progress=False)
    assert result.texts[0] and result.ok.tolist() == [True] + [False] * (len(paths) - 1)
    reasons = {os.path.basename(p): r for p, r in result.errors.items()}
    assert "not an image" in reasons["notes.jpg"] and "empty" in reasons["empty.jpg"]
    assert "folder" in reasons["folder.jpg"] and "cannot read" in reasons["missing.jpg"]
    if fifo.exists():
        assert "FIFO" in reasons["pipe.jpg"]


def test_an_ocr_failure_costs_only_its_poster(posters, tmp_path):
    reader = FakeReader()

    def flaky(rgb):
        if reader.calls == 1:
            reader.calls += 1
            raise RuntimeError("onnxruntime said no")
        return reader(rgb)

    result = ocr.read_texts(posters, tmp_path / "cache", reader=flaky, progress=False)
    assert result.ok.sum() == len(posters) - 1 and result.computed == len(posters) - 1
    (path, reason), = result.errors.items()
    assert "RuntimeError: onnxruntime said no" in reason
    again = ocr.read_texts(posters, tmp_path / "cache", reader=FakeReader(), progress=False)
    assert again.ok.all() and again.computed == 1  # tried again next time, the others from the cache


def test_missing_rapidocr_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rapidocr" else real(name, *a))
    with pytest.raises(ocr.TextUnavailable) as err:
        ocr.require_rapidocr()
    assert "\n" not in str(err.value) and "posterlens[text]" in str(err.value)


@pytest.mark.skipif(not ocr.rapidocr_available(), reason="rapidocr (posterlens[text]) is not installed")
def test_rapidocr_reads_a_poster_offline(sample_dir, tmp_path):
    paths = sorted((sample_dir / "images").iterdir())[:3]
    result = ocr.read_texts(paths, tmp_path / "cache", progress=False)
    assert result.ok.all() and result.computed == 3
    assert any(len(t) > 3 for t in result.texts)  # posters carry titles and names


@pytest.mark.skipif(not ocr.rapidocr_available(), reason="rapidocr (posterlens[text]) is not installed")
def test_worker_processes_read_what_one_process_reads(sample_dir, tmp_path):
    paths = sorted((sample_dir / "images").iterdir())[:6]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a poster")
    one = ocr.read_texts(paths, tmp_path / "one", progress=False)
    two = ocr.read_texts([*paths, broken], tmp_path / "two", batch_size=2, progress=False, workers=2)
    assert two.texts[:6] == one.texts and two.computed == 6  # same words, in the catalogue's order
    assert two.texts[6] is None and str(broken) in two.errors  # a bad poster costs itself only
    again = ocr.read_texts(paths, tmp_path / "two", progress=False, workers=2)
    assert again.cached == 6 and again.computed == 0  # every finished batch was cached


def test_ocr_engine_rules(monkeypatch):
    with pytest.raises(ValueError, match="OCR engine 'tensorrt'"):
        ocr.rapidocr_params(ocr.OcrSettings(), "tensorrt")
    assert ocr.ocr_engine() in ocr.ENGINES
    monkeypatch.setattr(ocr, "ocr_engine", lambda: "onnxruntime")
    on_ort = ocr.OcrSettings().key  # what onnxruntime's texts were cached under before OpenVINO could read them
    assert re.fullmatch(r"rapidocr[\d.]+-det320-box0\.7-max1024", on_ort)
    assert "engine_type" not in str(ocr.rapidocr_params(ocr.OcrSettings()))
    monkeypatch.setattr(ocr, "ocr_engine", lambda: "openvino")
    assert ocr.OcrSettings().key == on_ort + "-openvino-bf16"  # bf16 reads a few words differently: cached apart
    params = ocr.rapidocr_params(ocr.OcrSettings(threads=2))
    assert params["EngineConfig.openvino.inference_num_threads"] == 2
    if ocr.rapidocr_available():  # the wheel's own ONNX files: rapidocr would download OpenVINO models otherwise
        assert all(os.path.isfile(params[f"{part}.model_path"]) for part in ("Det", "Rec"))


@pytest.mark.skipif(not ocr.rapidocr_available(), reason="rapidocr (posterlens[text]) is not installed")
def test_openvino_and_onnxruntime_read_the_same_titles(sample_dir, sample_rows):
    """Where the CPU has bf16, OpenVINO reads a few small words differently (benchmarks/ocr_speed.py:
    96% of onnxruntime's words), never the titles."""
    pytest.importorskip("openvino")
    rows = sample_rows.head(12)
    paths = [sample_dir / "images" / f"tt{int(imdb):07d}.jpg" for imdb in rows["imdbId"]]
    images = [ocr.poster_pixels(str(p), p.read_bytes(), ocr.OcrSettings().max_side) for p in paths]
    found = {}
    for engine in ocr.ENGINES:
        read = ocr.ocr_reader(ocr.OcrSettings(), engine)
        found[engine] = [collections.Counter(re.findall(r"\w\w+", read(rgb).lower())) for rgb in images]
    ort, ov = found["onnxruntime"], found["openvino"]
    assert sum(sum((a & b).values()) for a, b in zip(ort, ov)) >= 0.9 * sum(sum(a.values()) for a in ort) > 0
    for title, a, b in zip(rows["Title"], ort, ov):
        title_words = set(re.findall(r"\w\w+", re.sub(r"\(\d{4}\)$", "", title).lower()))
        assert title_words & set(a) <= set(b), title


GENRES = ["Drama", "Comedy", "Horror"]
TEXTS = ["a love story in paris", "laugh out loud comedy", "the night they came home scream",
         "love and tears", "funny guys laugh", "blood night terror", "", "tears of a story",
         "comedy of the year", "terror in the night"] * 4


def _labels():
    Y = np.zeros((len(TEXTS), 3), np.float32)
    for i, t in enumerate(TEXTS):
        Y[i, 0] = any(w in t for w in ("love", "tears", "story"))
        Y[i, 1] = any(w in t for w in ("laugh", "funny", "comedy"))
        Y[i, 2] = any(w in t for w in ("night", "terror", "blood", "scream"))
    return Y


def test_text_classifier_round_trip(tmp_path):
    Y = _labels()
    clf = text.TextGenreClassifier(min_df=1).fit(TEXTS, Y)
    assert clf.fit(TEXTS, Y) is clf and clf.predict_proba(TEXTS).shape == Y.shape
    assert (clf.predict(["a night of blood"])[0] == [0, 0, 1]).all()
    arrays, vocab = clf.to_arrays()
    back = text.TextGenreClassifier.from_arrays(arrays, json.loads(json.dumps(vocab)), clf.get_params())
    new = ["love at night", "", "unseen words only"]
    assert_allclose(back.predict_proba(new), clf.predict_proba(new), rtol=1e-6)


def test_text_model_fuses_saves_and_refuses_damage(tmp_path):
    Y = _labels()
    rng = np.random.default_rng(0)
    P_image = np.clip(0.5 * Y + 0.25 + rng.normal(0, 0.15, Y.shape), 0.01, 0.99).astype(np.float32)
    folds = [(np.setdiff1d(np.arange(len(Y)), v), v) for v in np.array_split(np.arange(len(Y)), 4)]
    model = text.TextModel.fit(TEXTS, Y, P_image, folds, GENRES, min_df=1)
    texts = ["love at night", None, "funny"]
    P = model.predict_proba(P_image[:3], texts)
    assert P.shape == (3, 3) and ((P > 0) & (P < 1)).all()
    assert_allclose(P[1], P_image[1])  # not read: the image model's probabilities
    assert model.labels(P).sum(axis=1).min() >= 1
    model.save(tmp_path)
    back = text.TextModel.load(tmp_path, GENRES)
    assert_allclose(back.predict_proba(P_image[:3], texts), P, rtol=1e-6)
    assert back.settings == model.settings
    with pytest.raises(text.TextModelError, match="genres"):
        text.TextModel.load(tmp_path, ["Drama", "Comedy", "Western"])
    meta = json.loads((tmp_path / text.TEXT_MODEL_JSON).read_text())
    meta["classifier"]["params"]["C"] = "import os"
    (tmp_path / text.TEXT_MODEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(text.TextModelError, match="C"):
        text.TextModel.load(tmp_path)


def test_text_score_stacks_saves_and_refuses_damage(tmp_path):
    Y = _labels()
    rng = np.random.default_rng(0)
    P_image = np.clip(0.5 * Y + 0.25 + rng.normal(0, 0.15, Y.shape), 0.01, 0.99).astype(np.float32)
    folds = [(np.setdiff1d(np.arange(len(Y)), v), v) for v in np.array_split(np.arange(len(Y)), 4)]
    y = 6.0 + Y[:, 0] - Y[:, 2] + rng.normal(0, 0.1, len(Y))  # love stories rate high, horror low
    image_oof = 6.0 + rng.normal(0, 0.5, len(Y))  # an image model that knows nothing
    model = text.TextModel.fit(TEXTS, Y, P_image, folds, GENRES, min_df=1).fit_score(TEXTS, y, image_oof, folds, alpha=1.0)
    assert model.score.stack_[1] > 0.5 > abs(model.score.stack_[0])  # the text earned its weight, the noise did not
    texts, image_score = ["a love story", "blood and terror", None], np.array([6.0, 6.0, 6.5], np.float32)
    fused = model.predict_score(image_score, texts)
    assert fused[0] > fused[1] and fused[2] == image_score[2]  # not read: the image model's score
    model.save(tmp_path)
    assert_allclose(text.TextModel.load(tmp_path, GENRES).predict_score(image_score, texts), fused, rtol=1e-6)
    meta = json.loads((tmp_path / text.TEXT_MODEL_JSON).read_text())
    for bad in ("import os", {"alpha": "1; rm"}, {"alpha": 1.0, "evil": 2}, [1]):
        (tmp_path / text.TEXT_MODEL_JSON).write_text(json.dumps({**meta, "score": bad}))
        with pytest.raises(text.TextModelError, match="text model does not fit"):
            text.TextModel.load(tmp_path, GENRES)


# --- train --text, the model directory, predict ------------------------------------------------------

class FakeOcrSettings(ocr.OcrSettings):
    """Training reads the sample's 240 posters with ``FakeReader`` (real OCR: ~0.5 s each), cached
    under its own key, so that predicting later with the real settings runs rapidocr for real."""

    @property
    def key(self) -> str:
        return "fake-ocr-for-tests"


@pytest.fixture(scope="module")
def text_trained(tmp_path_factory, shared_cache, sample_dir):
    from posterlens.workflows import train as training

    out = tmp_path_factory.mktemp("text-model") / "model"
    config = training.TrainConfig(min_genre_count=10, text=True, genre={"epochs": 2, "calibration_folds": 2})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(text, "OcrSettings", FakeOcrSettings)
        patch.setattr(ocr, "ocr_reader", lambda settings: FakeReader())
        return training.train(sample_dir / "MovieGenre.csv", None, out, config, shared_cache, progress=False)


@pytest.fixture(scope="module")
def sample_X(text_trained, sample_dir, shared_cache):
    from posterlens.workflows.train import load_dataset

    return load_dataset(sample_dir / "MovieGenre.csv", None, text_trained.model.features, shared_cache, progress=False).X


def test_model_directory_names_its_text_part(text_trained):
    from posterlens.models import directory as model_files

    config = json.loads((text_trained.model_dir / "config.json").read_text())
    entry = config["text_model"]
    assert entry["class"] == "TextModel" and entry["files"] == [text.TEXT_MODEL_FILE, text.TEXT_MODEL_JSON]
    assert set(entry["files"]) <= set(config["files"]) and entry["ocr"] == dataclasses.asdict(ocr.OcrSettings())
    assert config["training"]["text"] is True and "text_model" not in text_trained.model.info
    assert model_files.TEXT_OCR == {f.name for f in dataclasses.fields(ocr.OcrSettings)}
    assert text_trained.validation["genre"]["macro_map"] > 0  # the holdout was scored with the text fused


def test_text_model_round_trips_and_fuses(text_trained, sample_X):
    from posterlens.models import directory as model_files

    fitted, loaded = text_trained.model, model_files.load(text_trained.model_dir)
    assert loaded.text is not None and loaded.text.settings == ocr.OcrSettings()
    texts = (["superman returns", "", None, "a love story"] * len(sample_X))[:len(sample_X)]
    P = loaded.genre_proba(sample_X, texts)
    assert_allclose(P, fitted.genre_proba(sample_X, texts), rtol=1e-5, atol=1e-6)
    assert not np.allclose(P, loaded.image_proba(sample_X))  # the text is fused
    assert_allclose(P[2::4], loaded.image_proba(sample_X)[2::4])  # text not read: the image model's
    assert np.array_equal(loaded.genre_labels(P), loaded.text.labels(P))
    assert np.array_equal(loaded.thresholds, loaded.text.fusion.rule_.thresholds_)
    with pytest.raises(ValueError, match="--text"):
        loaded.genre_proba(sample_X)
    assert loaded.text.score is not None  # the sample has scores: the text score model was stacked in
    scores = loaded.score(sample_X, texts)
    assert_allclose(scores, fitted.score(sample_X, texts), rtol=1e-5, atol=1e-5)
    image_only = np.clip(loaded.score_model.predict(sample_X), 0, 10)
    assert not np.allclose(scores, image_only) and np.allclose(scores[2::4], image_only[2::4])
    with pytest.raises(ValueError, match="--text"):
        loaded.score(sample_X)


def test_predict_reads_the_text_and_fuses_it(text_trained, shared_cache, sample_dir, tmp_path):
    from typer.testing import CliRunner

    from posterlens.app.cli import app
    from posterlens.workflows import predict

    poster = sorted((sample_dir / "images").iterdir())[0]
    predictor = predict.load(text_trained.model_dir, shared_cache)
    table = predictor.predict(poster)
    genres = table.attrs["genres"]
    P_image = predictor.model.image_proba(predictor.embed([poster]).features)
    assert not np.allclose(table[genres].to_numpy(np.float32), P_image, atol=1e-4)
    real = ocr.read_texts([poster], shared_cache, progress=False)  # what predict read, from the cache now
    assert real.cached == 1 and real.texts[0]
    assert_allclose(table[genres].to_numpy(np.float32), predictor.model.fuse(P_image, real.texts), rtol=1e-5)
    assert_allclose(table["score"], predictor.model.score(predictor.embed([poster]).features, real.texts), rtol=1e-5)
    in_memory = predictor.predict(poster.read_bytes(), tta=True)  # OCR without the cache, after the mirror average
    assert in_memory["genres"].iloc[0] is not None and len(in_memory) == 1
    result = CliRunner().invoke(app, ["predict", str(poster), "-m", str(text_trained.model_dir),
                                      "--cache", str(shared_cache), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "predictions_final.csv").is_file()


HOSTILE_TEXT = {
    "not an object": (lambda c: c.__setitem__("text_model", "posterlens.text:evil"), "'text_model' must be null"),
    "unknown class": (lambda c: c["text_model"].__setitem__("class", "os.system"), "text_model"),
    "bad type": (lambda c: c["text_model"]["params"].__setitem__("C", "1; rm -rf /"), "must be a number"),
    "out of range": (lambda c: c["text_model"]["ocr"].__setitem__("max_side", 10**9), "out of range"),
    "odd name": (lambda c: c["text_model"]["params"].__setitem__("__class__", 1), "not a parameter name"),
    "missing setting": (lambda c: c["text_model"]["ocr"].pop("det_side"), "text_model.ocr"),
    "other files": (lambda c: c["text_model"].__setitem__("files", ["../x.json", "text_model.json"]),
                    "text_model.files"),
    "unlisted file": (lambda c: c["files"].pop(text.TEXT_MODEL_JSON), "text_model.files"),
    "disagrees": (lambda c: c["text_model"]["params"].__setitem__("C", 5.0), "does not match"),
}


@pytest.mark.parametrize("attack", list(HOSTILE_TEXT))
def test_hostile_text_model_entry_is_refused_in_one_line(text_trained, tmp_path, attack, rewrite_config):
    from posterlens.models import directory as model_files

    change, message = HOSTILE_TEXT[attack]
    copy = tmp_path / "model"
    shutil.copytree(text_trained.model_dir, copy)
    rewrite_config(copy, change)
    with pytest.raises(model_files.ModelError, match=message) as caught:
        model_files.load(copy)
    assert "\n" not in str(caught.value) and "config.json" in str(caught.value)


def test_damaged_text_model_file_is_one_line(text_trained, tmp_path, rewrite_config):
    from posterlens.models import directory as model_files

    copy = tmp_path / "model"
    shutil.copytree(text_trained.model_dir, copy)
    (copy / text.TEXT_MODEL_FILE).write_bytes(b"not safetensors")
    digest = model_files.sha256(copy / text.TEXT_MODEL_FILE)
    rewrite_config(copy, lambda c: c["files"].__setitem__(text.TEXT_MODEL_FILE, digest))
    with pytest.raises(model_files.ModelError, match="text model") as caught:
        model_files.load(copy)
    assert "\n" not in str(caught.value)


def test_only_a_model_with_text_imports_scikit_learn(trained_model, text_trained):
    import subprocess
    import sys

    code = ("import sys; from posterlens.models import directory; directory.load(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'sklearn', 'posterlens.models.text') if m in sys.modules))")
    def imported(model_dir) -> str:
        return subprocess.run([sys.executable, "-c", code, str(model_dir)], check=True, capture_output=True,
                              text=True).stdout.strip()

    assert imported(trained_model) == "[]"
    assert imported(text_trained.model_dir) == "['posterlens.models.text', 'sklearn']"


def test_train_text_without_rapidocr_is_one_line(monkeypatch, small_catalog, tmp_path):
    from typer.testing import CliRunner

    from posterlens.app.cli import app
    from posterlens.workflows.train import TrainConfig

    monkeypatch.setattr(ocr, "rapidocr_available", lambda: False)
    with pytest.raises(ocr.TextUnavailable, match=r"posterlens\[text\]"):
        TrainConfig(text=True)
    TrainConfig(text=False)  # image-only training does not need it
    result = CliRunner().invoke(app, ["train", "-c", str(small_catalog), "-o", str(tmp_path / "m"), "--text"])
    assert result.exit_code == 2 and "posterlens[text]" in result.output
    assert not (tmp_path / "m").exists()


def _retext(model_dir, rewrite_config, change_meta=None, change_arrays=None):
    """Edit text_model.json / text_model.safetensors, checksums recomputed (damage an attacker can hide)."""
    from safetensors.numpy import load_file, save_file

    from posterlens.models import directory as model_files

    if change_meta:
        meta = json.loads((model_dir / text.TEXT_MODEL_JSON).read_text())
        change_meta(meta)
        (model_dir / text.TEXT_MODEL_JSON).write_text(json.dumps(meta))
    if change_arrays:
        arrays = load_file(str(model_dir / text.TEXT_MODEL_FILE))
        change_arrays(arrays)
        save_file(arrays, str(model_dir / text.TEXT_MODEL_FILE))
    rewrite_config(model_dir, lambda c: c["files"].update(
        {name: model_files.sha256(model_dir / name) for name in c["files"]}))


INCONSISTENT_TEXT = {
    "char n-grams crossed": (lambda m: m["classifier"]["params"].update(char_min_n=6, char_max_n=2), None,
                             "char_min_n 6 and char_max_n 2"),
    "zero threshold": (None, lambda a: a["fusion.thresholds"].__setitem__(0, 0.0), "fusion.thresholds"),
    "huge weight": (None, lambda a: a["coef"].__setitem__((0, 0), 3e38), "no fitted weights"),
    "weights as integers": (None, lambda a: a.__setitem__("intercept", a["intercept"].astype(np.int64)),
                            "finite floats"),
    "NaN rule": (lambda m: m["rule"].__setitem__("rank_power", float("nan")), None, "not a finite number"),
    "repeated word": (lambda m: m["vocabulary"]["word"].__setitem__(1, m["vocabulary"]["word"][0]), None,
                      "empty or repeated"),
    "empty word": (lambda m: m["vocabulary"]["char"].__setitem__(0, ""), None, "empty or repeated"),
}


@pytest.mark.parametrize("case", list(INCONSISTENT_TEXT))
def test_inconsistent_text_model_settings_are_refused(text_trained, tmp_path, case, rewrite_config):
    from posterlens.models import directory as model_files

    change_meta, change_arrays, message = INCONSISTENT_TEXT[case]
    copy = tmp_path / "model"
    shutil.copytree(text_trained.model_dir, copy)
    _retext(copy, rewrite_config, change_meta, change_arrays)
    with pytest.raises(model_files.ModelError, match=re.escape(message)) as caught:
        model_files.load(copy)
    assert "\n" not in str(caught.value)
