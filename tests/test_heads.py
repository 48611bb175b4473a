"""The estimators keep the scikit-learn contract, own their whole chain and round-trip exactly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.base import clone

from posterlens.models.estimators import GenreClassifier, LabelRule, ScoreClassifier, ScoreRegressor


@pytest.fixture(scope="module")
def data():
    """300 posters, 40 features, 4 genres that depend on the features, and a score."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 40)).astype(np.float32)
    W = rng.normal(size=(40, 4))
    Y = (X @ W + rng.normal(scale=2.0, size=(300, 4)) > np.array([0.5, 1.5, 2.5, 3.0])).astype(np.float32)
    y = 6.0 + X[:, :3].sum(axis=1) * 0.4 + rng.normal(scale=0.3, size=300)
    return X, Y, y


@pytest.fixture(scope="module")
def genre_model(data):
    X, Y, _ = data
    return GenreClassifier(epochs=10, wd=0.1, lr=3e-2, calibration_folds=3).fit(X, Y)  # 20 steps: enough at 3e-2


@pytest.mark.parametrize("estimator", [GenreClassifier(epochs=7, max_labels=2), ScoreRegressor(alpha=5.0),
                                       ScoreClassifier(epochs=3)])
def test_clone_keeps_the_parameters(estimator):
    copy = clone(estimator)
    assert copy.get_params() == estimator.get_params() and copy is not estimator
    assert not hasattr(copy, "module_") and not hasattr(copy, "pipeline_")


def test_genre_classifier_fits_and_predicts_the_right_shapes(data, genre_model):
    X, Y, _ = data
    P = genre_model.predict_proba(X[:10])
    assert P.shape == (10, 4) and ((P > 0) & (P < 1)).all()
    L = genre_model.predict(X[:10])
    assert L.shape == (10, 4) and set(np.unique(L)) <= {0.0, 1.0}
    assert np.array_equal(L, genre_model.labels(P))  # predict is the label rule on predict_proba
    assert genre_model.oof_proba_.shape == Y.shape
    assert skm.roc_auc_score(Y, genre_model.predict_proba(X), average="macro") > 0.75  # it learned something


def test_genre_classifier_round_trip_matches_the_fitted_model(data, genre_model):
    X, _, _ = data
    loaded = GenreClassifier.from_arrays(genre_model.to_arrays(), genre_model.get_params())
    np.testing.assert_allclose(loaded.predict_proba(X), genre_model.predict_proba(X), rtol=1e-6)
    assert np.array_equal(loaded.predict(X), genre_model.predict(X))


@pytest.mark.parametrize("estimator", [ScoreRegressor(components=16, kernel_components=100), ScoreClassifier(epochs=2)])
def test_score_models_round_trip_matches_the_fitted_model(data, estimator):
    X, _, y = data
    fitted = estimator.fit(X, np.round(y, 1))
    loaded = type(estimator).from_arrays(fitted.to_arrays(), fitted.get_params())
    np.testing.assert_allclose(loaded.predict(X), fitted.predict(X), rtol=1e-5)


def test_score_regressor_learns_the_score(data):
    X, _, y = data
    model = ScoreRegressor(components=16, kernel_components=200).fit(X[:250], y[:250])
    mae = skm.mean_absolute_error(y[250:], model.predict(X[250:]))
    assert mae < 0.8 * skm.mean_absolute_error(y[250:], np.full(50, y[:250].mean()))


def test_f1_thresholds_maximise_each_genres_f1():
    y = np.array([[1], [1], [0], [1], [0], [0]], dtype=np.float32)
    p = np.array([[0.9], [0.35], [0.4], [0.3], [0.2], [0.1]], dtype=np.float32)
    t = LabelRule.f1_thresholds(y, p)
    assert t[0] == pytest.approx(0.3)  # predicting the top 4 gives F1 6/7, the best
    best = max(skm.f1_score(y[:, 0], p[:, 0] >= c) for c in p[:, 0])
    assert skm.f1_score(y[:, 0], p[:, 0] >= t[0]) == pytest.approx(best)


def _rule(thresholds, max_labels=2, rank_power=0.5) -> LabelRule:
    rule = LabelRule(max_labels, rank_power)
    rule.thresholds_ = np.asarray(thresholds, dtype=np.float32)
    return rule


def test_label_rule_caps_the_labels_and_never_gives_none():
    rule = _rule([0.2, 0.2, 0.2, 0.2], max_labels=2)
    P = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.05, 0.01, 0.02]], dtype=np.float32)
    L = rule.predict(P)
    assert L[0].tolist() == [1, 1, 0, 0]  # four over threshold, the two most probable kept
    assert L[1].tolist() == [1, 0, 0, 0]  # none over threshold: the top genre all the same


def test_label_rule_ranks_by_how_far_a_genre_clears_its_bar():
    P = np.array([[0.5, 0.45, 0.12]], dtype=np.float32)
    thresholds = [0.4, 0.4, 0.04]  # the rare third genre is at 3x its threshold
    assert _rule(thresholds, 2, rank_power=0.0).predict(P)[0].tolist() == [1, 1, 0]
    assert _rule(thresholds, 2, rank_power=1.0).predict(P)[0].tolist() == [1, 0, 1]


def test_numpy_heads_compute_what_torch_and_scikit_learn_fitted(data, genre_model):
    """The fitted heads predict with numpy alone; they must agree with the module and pipeline they came from."""
    import torch

    from posterlens.models.estimators import _forward
    from posterlens.models.fitted import standardised

    X, _, y = data
    head = genre_model.head_
    expected = _forward(genre_model.module_, standardised(X, head.mean, head.std))
    np.testing.assert_allclose(head.raw_logits(X), expected, rtol=1e-4, atol=1e-5)
    regressor = ScoreRegressor(components=16, kernel_components=100).fit(X, y)
    np.testing.assert_allclose(regressor.predict(X), regressor.pipeline_.predict(X) + y.mean(), rtol=1e-4, atol=1e-4)
    hidden = GenreClassifier(hidden=8, epochs=2, calibration_folds=2).fit(X, (y > 6)[:, None].repeat(2, axis=1))
    with torch.inference_mode():
        torch_logits = hidden.module_(torch.as_tensor(standardised(X, hidden.head_.mean, hidden.head_.std))).numpy()
    np.testing.assert_allclose(hidden.head_.raw_logits(X), torch_logits, rtol=1e-4, atol=1e-5)


def test_loading_a_model_for_prediction_imports_neither_torch_nor_scikit_learn():
    import subprocess
    import sys

    code = ("import sys, posterlens.workflows.predict, posterlens.models.directory, posterlens.models.fitted; "
            "print(sorted(m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_large_sets_calibrate_on_as_many_folds_as_calibration_posters_need(data):
    X, Y, _ = data
    model = GenreClassifier(epochs=3, calibration_folds=3, calibration_posters=90).fit(X, Y)
    assert 90 <= len(model.oof_rows_) <= 110  # one fold of 300 posters, not all three
    assert model.oof_proba_.shape == (len(model.oof_rows_), Y.shape[1])
    assert model.predict(X).sum(axis=1).min() >= 1


def test_epochs_are_cut_to_the_step_budget_on_large_sets():
    model = GenreClassifier(epochs=20, batch_size=256, max_steps=4000)
    assert model.epochs_for(4722) == 20 and model.epochs_for(51200) == 20
    assert model.epochs_for(100_000) == 10 and model.epochs_for(10_000_000) == 1
    assert GenreClassifier(epochs=20).epochs_for(204_800) == 20  # the default budget cuts nothing up to here
    assert GenreClassifier(epochs=20).epochs_for(1_000_000) == 4
    assert GenreClassifier(epochs=20, max_steps=0).epochs_for(10_000_000) == 20  # 0: no budget
