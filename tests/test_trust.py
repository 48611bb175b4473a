"""How far to trust an answer (``models.trust``): the genre confidence is the expected F1 it claims,
score intervals cover what they promise, the domain score tells posters from other images, and a
model directory's trust file is checked like the rest of it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import posterlens
from posterlens.models import directory
from posterlens.models.directory import ModelError
from posterlens.models.estimators import ScoreClassifier, ScoreRegressor
from posterlens.models.fitted import save_arrays
from posterlens.models.trust import DOMAIN_SHARE, conformal_quantile, expected_f1, fit_domain, fit_intervals
from posterlens.workflows.metrics import accepted_curve


def test_genre_confidence_is_the_expected_f1_under_the_probabilities():
    rng = np.random.default_rng(0)
    P = rng.uniform(0, 1, (6, 7)) ** 2
    labels = P > 0.3
    labels[0] = False  # an empty answer
    draws = rng.uniform(size=(100_000, *P.shape)) < P  # genres present independently with their probabilities
    hits = (draws & labels).sum(axis=2)
    total = labels.sum(axis=1) + draws.sum(axis=2)
    simulated = np.where(total > 0, 2 * hits / np.maximum(total, 1), 1.0).mean(axis=0)
    np.testing.assert_allclose(expected_f1(P, labels), simulated, atol=0.005)
    assert expected_f1(np.array([[1.0, 0.0]]), np.array([[1, 0]]))[0] == pytest.approx(1.0)
    assert expected_f1(np.array([[0.0, 0.0]]), np.array([[0, 0]]))[0] == pytest.approx(1.0)
    assert expected_f1(np.array([[0.0, 1.0]]), np.array([[1, 0]]))[0] == pytest.approx(0.0)


def test_accepting_the_most_confident_answers_keeps_the_best_ones():
    Y = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    L = np.array([[1, 0], [1, 0], [1, 0], [1, 0]])  # right on the first two only
    curve = accepted_curve(Y, L, confidence=np.array([0.9, 0.8, 0.2, 0.1]))
    assert curve["0.5"] == 1.0 and curve["1.0"] == pytest.approx(0.5)
    assert accepted_curve(Y, L, confidence=np.array([0.1, 0.2, 0.8, 0.9]))["0.5"] == 0.0


def test_the_conformal_quantile_is_the_finite_sample_one():
    scores = np.arange(1, 10, dtype=np.float32)  # n = 9: level 0.8 -> the ceil(10 * 0.8) = 8th smallest
    assert conformal_quantile(scores, 9, 0.8) == 8
    assert conformal_quantile(scores, 9, 0.95) == 9  # beyond the data: the largest


def _noisy_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose noise grows with the first feature: intervals must widen with it."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 12)).astype(np.float32)
    noise = 0.2 + 1.5 * (X[:, 0] > 0)
    return X, 6 + 0.5 * X[:, 1] + noise * rng.normal(size=n)


def test_score_intervals_cover_what_they_promise_and_widen_where_the_model_errs():
    X, y = _noisy_scores(1500, seed=0)
    model = ScoreRegressor(components=12, kernel_components=200).fit(X, y)
    intervals = fit_intervals(model, X, y)
    X_new, y_new = _noisy_scores(3000, seed=1)
    predicted = model.predict(X_new)
    for level in (0.5, 0.8, 0.95):
        low, high = intervals.interval(predicted, level, reduced=model.head_.reduce(X_new))
        assert (low <= predicted).all() and (predicted <= high).all()
        assert abs(np.mean((y_new >= low) & (y_new <= high)) - level) < 0.04
    low, high = intervals.interval(predicted, 0.8, reduced=model.head_.reduce(X_new))
    noisy = X_new[:, 0] > 0
    assert (high - low)[noisy].mean() > 1.5 * (high - low)[~noisy].mean()


def test_score_classes_get_prediction_sets_that_hold_the_true_class():
    X, y = _noisy_scores(1200, seed=2)
    y = np.clip(np.round(y), 1, 10)
    model = ScoreClassifier(epochs=5).fit(X, y)
    intervals = fit_intervals(model, X, y)
    X_new, y_new = _noisy_scores(2000, seed=3)
    y_new = np.clip(np.round(y_new), 1, 10)
    low, high = intervals.interval(model.predict(X_new), 0.8, proba=model.predict_proba(X_new), classes=model.classes_)
    assert intervals.kind == "set" and set(np.unique(low)) <= set(model.classes_)
    assert np.mean((y_new >= low) & (y_new <= high)) >= 0.77


def test_the_domain_score_flags_what_lies_away_from_the_training_posters():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(5, 40))
    X = (rng.normal(size=(2000, 5)) @ basis + 0.1 * rng.normal(size=(2000, 40))).astype(np.float32)
    head = fit_domain(X[:1500])
    held_out = head.score(X[1500:])
    assert abs(np.mean(held_out < DOMAIN_SHARE) - DOMAIN_SHARE) < 0.02  # the share the threshold was chosen for
    away = X[1500:1600] + rng.normal(size=(100, 40)).astype(np.float32)  # off the training posters' plane
    assert np.mean(head.score(away) < DOMAIN_SHARE) > 0.95
    assert np.all(np.diff(head.score(X[:1] + np.linspace(0, 5, 6)[:, None].astype(np.float32))) <= 0)


def _images_not_posters() -> list[np.ndarray]:
    """Photos, a drawing and a page of text from scikit-image, cropped to a poster's shape."""
    from skimage import data

    images = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "page", "text", "brick", "coins", "horse"):
        image = Image.fromarray(np.asarray(getattr(data, name)(), dtype=np.uint8)).convert("RGB")
        width = min(image.width, image.height * 2 // 3)
        images.append(np.asarray(image.crop((0, 0, width, width * 3 // 2)).resize((182, 268))))
    return images


def test_the_released_model_tells_posters_from_other_images(sample_dir, shared_cache):
    predictor = posterlens.load(cache=shared_cache)
    others = predictor.predict(_images_not_posters())
    posters = predictor.predict(sorted((sample_dir / "images").glob("*.jpg"))[:60])  # it never saw them
    assert others["in_domain"].mean() <= 0.3 and posters["in_domain"].mean() >= 0.9  # measured: 0.2 and 0.97
    assert others["domain_score"].median() < posters["domain_score"].quantile(0.1)


def test_training_reports_how_far_to_trust_its_answers(trained):
    validation = trained.validation
    assert 0.5 < validation["score"]["interval"]["coverage"] <= 1 and validation["score"]["interval"]["level"] == 0.8
    assert 0 <= validation["domain"]["flagged"] <= 0.2
    assert set(validation["genre"]["accepted"]) == {f"{s / 10:.1f}" for s in range(1, 11)}


@pytest.fixture
def model_copy(trained_model, tmp_path):
    return shutil.copytree(trained_model, tmp_path / "model")


def test_a_trust_file_that_does_not_fit_is_refused(model_copy, rewrite_config):
    model = directory.load(model_copy)
    assert model.domain is not None and model.intervals is not None
    arrays = {**model.domain.to_arrays(), **model.intervals.to_arrays()}
    arrays["domain.mean"] = arrays["domain.mean"][:10]  # a domain head for other features
    save_arrays(arrays, model_copy / directory.TRUST_FILE)
    rewrite_config(model_copy, lambda c: c["files"].update(
        {directory.TRUST_FILE: directory.sha256(model_copy / directory.TRUST_FILE)}))
    with pytest.raises(ModelError, match="trust.safetensors: does not fit"):
        directory.load(model_copy)


@pytest.mark.parametrize("trust, message", [
    ({"domain": "yes", "intervals": None}, "'trust' must be"),
    ({"domain": True, "intervals": "set"}, "does not fit"),  # a set for a regression model
])
def test_a_trust_entry_that_lies_is_refused(model_copy, rewrite_config, trust, message):
    rewrite_config(model_copy, lambda c: c.__setitem__("trust", trust))
    with pytest.raises(ModelError, match=message):
        directory.load(model_copy)


def test_a_model_from_before_the_trust_parts_still_predicts(model_copy, rewrite_config, shared_cache, sample_dir):
    def drop_trust(config):
        del config["trust"]
        del config["files"][directory.TRUST_FILE]

    rewrite_config(model_copy, drop_trust)
    (model_copy / directory.TRUST_FILE).unlink()
    table = posterlens.load(model_copy, shared_cache).predict(sorted((sample_dir / "images").glob("*.jpg"))[:2])
    assert table[["score_low", "score_high", "domain_score"]].isna().all().all() and table["in_domain"].isna().all()
    assert table["genre_confidence"].between(0, 1).all()  # needs only the probabilities


def test_a_bad_interval_level_is_one_line_and_exit_2(sample_dir):
    from typer.testing import CliRunner

    from posterlens.app.cli import app

    result = CliRunner().invoke(app, ["predict", "--interval", "1.5", str(next((sample_dir / "images").glob("*.jpg")))])
    assert result.exit_code == 2 and "interval" in result.output and "out of range" in result.output
    assert len(result.output.strip().splitlines()) == 1
