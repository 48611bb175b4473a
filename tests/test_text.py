"""Poster text: OCR cached by image hash, bad files skipped with a reason, text model round trips."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
from numpy.testing import assert_allclose

from posterlens import text


@pytest.fixture
def posters(tmp_path, sample_dir):
    folder = tmp_path / "posters"
    folder.mkdir()
    for path in sorted((sample_dir / "images").iterdir())[:4]:
        shutil.copy(path, folder)
    return sorted(folder.iterdir())


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
    first = text.read_texts(posters, tmp_path / "cache", reader=reader, batch_size=2, progress=False)
    assert reader.calls == len(posters) and first.computed == len(posters) and all(first.texts)
    copy = tmp_path / "copy.jpg"  # same bytes, other name: read from the cache
    shutil.copy(posters[0], copy)
    again = text.read_texts([*posters, copy], tmp_path / "cache", reader=reader, progress=False)
    assert reader.calls == len(posters) and again.cached == len(posters) + 1
    assert again.texts == [*first.texts, first.texts[0]]
    chunks = sorted((tmp_path / "cache" / "text").glob("*/*.json"))
    body = json.loads(chunks[0].read_text())
    body["texts"][0] = "tampered"
    chunks[0].write_text(json.dumps(body))
    with caplog.at_level(logging.WARNING):
        fixed = text.read_texts(posters, tmp_path / "cache", reader=reader, progress=False)
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
    result = text.read_texts(paths, tmp_path / "cache", reader=FakeReader(), progress=False)
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

    result = text.read_texts(posters, tmp_path / "cache", reader=flaky, progress=False)
    assert result.ok.sum() == len(posters) - 1 and result.computed == len(posters) - 1
    (path, reason), = result.errors.items()
    assert "RuntimeError: onnxruntime said no" in reason
    again = text.read_texts(posters, tmp_path / "cache", reader=FakeReader(), progress=False)
    assert again.ok.all() and again.computed == 1  # tried again next time, the others from the cache


def test_missing_rapidocr_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rapidocr" else real(name, *a))
    with pytest.raises(text.TextUnavailable) as err:
        text.require_rapidocr()
    assert "\n" not in str(err.value) and "posterlens[text]" in str(err.value)


@pytest.mark.skipif(not text.rapidocr_available(), reason="rapidocr (posterlens[text]) is not installed")
def test_rapidocr_reads_a_poster_offline(sample_dir, tmp_path):
    paths = sorted((sample_dir / "images").iterdir())[:3]
    result = text.read_texts(paths, tmp_path / "cache", progress=False)
    assert result.ok.all() and result.computed == 3
    assert any(len(t) > 3 for t in result.texts)  # posters carry titles and names


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
