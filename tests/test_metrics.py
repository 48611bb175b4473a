"""Metrics agree with scikit-learn and with hand computation on small cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from posterlens.workflows import metrics

Y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
P = np.array([[0.9, 0.2, 0.6], [0.3, 0.8, 0.1], [0.7, 0.4, 0.2], [0.1, 0.3, 0.7]], dtype=np.float32)
L = (P >= 0.5).astype(np.float32)


def test_genre_metrics_match_sklearn():
    m = metrics.genre_metrics(Y, P, L)
    assert m["micro_f1"] == pytest.approx(skm.f1_score(Y, L, average="micro"))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(Y, L, average="macro"))
    assert m["samples_f1"] == pytest.approx(skm.f1_score(Y, L, average="samples"))
    assert m["macro_map"] == pytest.approx(skm.average_precision_score(Y, P, average="macro"))
    assert m["micro_map"] == pytest.approx(skm.average_precision_score(Y, P, average="micro"))
    assert m["macro_roc_auc"] == pytest.approx(skm.roc_auc_score(Y, P, average="macro"))
    assert m["hamming_loss"] == pytest.approx(1 / 12)  # one wrong cell: [2, 1]
    assert m["binary_accuracy"] == pytest.approx(11 / 12)
    assert m["subset_accuracy"] == pytest.approx(0.75)
    assert m["jaccard"] == pytest.approx(skm.jaccard_score(Y, L, average="samples"))
    assert m["brier"] == pytest.approx(np.mean((P - Y) ** 2))


def test_ece_by_hand():
    y = np.array([[1.0], [0.0], [1.0], [1.0]])
    p = np.array([[0.1], [0.1], [0.9], [0.9]])
    # bin of 0.1: observed 0.5 -> gap 0.4; bin of 0.9: observed 1.0 -> gap 0.1; equal weights
    assert metrics.expected_calibration_error(y, p, bins=10) == pytest.approx(0.25)
    assert metrics.expected_calibration_error(y, y) == pytest.approx(0.0)


def test_auc_ignores_genres_absent_from_the_set():
    y = np.array([[1, 0], [0, 0], [1, 0]], dtype=np.float32)
    p = np.array([[0.8, 0.1], [0.2, 0.3], [0.6, 0.2]], dtype=np.float32)
    assert metrics.genre_metrics(y, p, (p > 0.5).astype(np.float32))["macro_roc_auc"] == pytest.approx(1.0)


def test_baselines():
    prior = np.array([0.6, 0.3, 0.5])
    base = metrics.genre_baselines(prior, Y)
    constant = np.tile([1, 0, 1], (4, 1)).astype(np.float32)  # genres 0 and 2 are the top two
    assert base["top2_constant"] == metrics.genre_metrics(Y, constant, constant)
    assert base["top2_constant"]["macro_roc_auc"] == pytest.approx(0.5)
    assert base["priors"]["micro_f1"] == pytest.approx(skm.f1_score(Y, np.tile([1, 0, 1], (4, 1)), average="micro"))


def test_confusions_count_missed_and_predicted_instead():
    y = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    l = np.array([[0, 1, 0], [0, 1, 1], [0, 1, 0]], dtype=np.float32)
    table = metrics.confusions(y, l, ["Drama", "Comedy", "Horror"])
    assert table.values.tolist() == [["Drama", "Comedy", 2], ["Drama", "Horror", 1]]


def test_score_metrics():
    y = np.array([5.0, 6.0, 7.0, 8.0])
    m = metrics.score_metrics(y, np.array([5.5, 6.0, 6.5, 9.0]), train_mean=6.0)
    assert m["mae"] == pytest.approx(0.5)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 0.25 + 1) / 4))
    assert m["spearman"] == pytest.approx(1.0)
    assert m["baseline_mae"] == pytest.approx(1.0)


def test_summarise_folds():
    runs = [{"genre": {"f1": 0.2}}, {"genre": {"f1": 0.4}}]
    assert metrics.summarise_folds(runs) == {"genre": {"f1": {"mean": pytest.approx(0.3), "std": pytest.approx(0.1)}}}
