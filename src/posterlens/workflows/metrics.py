"""Multi-label, calibration and score metrics, and the trivial baselines to compare with.

A model that predicts no genre at all already reaches about 90% binary accuracy, so every
report carries the baselines computed with the same functions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

__all__ = ["expected_calibration_error", "reliability_table", "genre_metrics", "genre_baselines", "per_genre_table",
           "confusions", "score_metrics", "interval_metrics", "ACCEPTED_SHARES", "COVERAGE_LEVELS", "accepted_curve", "summarise_folds"]

ACCEPTED_SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # the points of ``accepted_curve``
COVERAGE_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # interval levels the report plots coverage at


def expected_calibration_error(Y: np.ndarray, P: np.ndarray, bins: int = 15) -> float:
    """ECE over every (poster, genre) probability, equal-width bins."""
    y, p = Y.ravel(), P.ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(total)


def reliability_table(Y: np.ndarray, P: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean predicted probability vs observed frequency per bin (for the reliability diagram)."""
    y, p = Y.ravel(), P.ravel()
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    rows = [{"bin": b, "predicted": p[which == b].mean(), "observed": y[which == b].mean(), "count": int((which == b).sum())}
            for b in range(bins) if (which == b).any()]
    return pd.DataFrame(rows)


def _safe(fn, *args, **kwargs) -> float:
    """A metric, or NaN where it is undefined (e.g. ROC-AUC of a genre with no positive)."""
    try:
        return float(fn(*args, **kwargs))
    except ValueError:
        return float("nan")


def genre_metrics(Y: np.ndarray, P: np.ndarray, L: np.ndarray) -> dict[str, float]:
    """Ranking metrics from probabilities ``P``, set metrics from labels ``L`` (0/1)."""
    present = Y.sum(axis=0) > 0  # AP and AUC are undefined for genres absent from the set
    return {
        "micro_f1": float(skm.f1_score(Y, L, average="micro", zero_division=0)),
        "macro_f1": float(skm.f1_score(Y, L, average="macro", zero_division=0)),
        "samples_f1": float(skm.f1_score(Y, L, average="samples", zero_division=0)),
        "macro_map": _safe(skm.average_precision_score, Y[:, present], P[:, present], average="macro"),
        "micro_map": _safe(skm.average_precision_score, Y, P, average="micro"),
        "macro_roc_auc": _safe(skm.roc_auc_score, Y[:, present], P[:, present], average="macro"),
        "binary_accuracy": float((Y == L).mean()),
        "hamming_loss": float(skm.hamming_loss(Y, L)),
        "jaccard": float(skm.jaccard_score(Y, L, average="samples", zero_division=0)),
        "subset_accuracy": float(skm.accuracy_score(Y, L)),
        "brier": float(np.mean((P - Y) ** 2)),
        "ece": expected_calibration_error(Y, P),
    }


def genre_baselines(prior: np.ndarray, Y: np.ndarray) -> dict[str, dict[str, float]]:
    """Given the training set's genre frequencies ``prior``: (a) its two most frequent genres
    for every poster; (b) the priors as probabilities (labels at 0.5, i.e. usually none)."""
    top2 = np.zeros_like(prior)
    top2[np.argsort(-prior)[:2]] = 1.0
    constant = np.tile(top2, (len(Y), 1))
    priors = np.tile(prior, (len(Y), 1))
    return {
        "top2_constant": genre_metrics(Y, constant, constant),
        "priors": genre_metrics(Y, priors, (priors >= 0.5).astype(np.float32)),
    }


def per_genre_table(Y: np.ndarray, P: np.ndarray, L: np.ndarray, genres: list[str], thresholds: np.ndarray) -> pd.DataFrame:
    """Precision, recall, F1, AP, support and threshold for every genre."""
    precision, recall, f1, support = skm.precision_recall_fscore_support(Y, L, average=None, zero_division=0)
    ap = [_safe(skm.average_precision_score, Y[:, j], P[:, j]) if Y[:, j].any() else float("nan") for j in range(len(genres))]
    return pd.DataFrame({"genre": genres, "precision": precision, "recall": recall, "f1": f1, "ap": ap,
                         "support": support.astype(int), "threshold": thresholds})


def confusions(Y: np.ndarray, L: np.ndarray, genres: list[str], top: int = 15) -> pd.DataFrame:
    """Most frequent (true genre missed -> genre predicted instead) pairs, as in the original design."""
    missed = (Y == 1) & (L == 0)
    extra = (Y == 0) & (L == 1)
    counts = missed.T.astype(np.int64) @ extra.astype(np.int64)  # [true, predicted instead]
    pairs = [(genres[i], genres[j], int(counts[i, j])) for i, j in zip(*np.nonzero(counts))]
    pairs.sort(key=lambda t: -t[2])
    return pd.DataFrame(pairs[:top], columns=["true_genre", "predicted_instead", "count"])


def score_metrics(y: np.ndarray, pred: np.ndarray, train_mean: float, classes: bool = False) -> dict[str, float]:
    """MAE, RMSE, Spearman, and the MAE of predicting the training mean; with ``classes`` (each score a
    class, the original design) also the accuracy: the share of posters whose score class is exact."""
    from scipy.stats import spearmanr

    figures = {
        "mae": float(skm.mean_absolute_error(y, pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "spearman": float(spearmanr(pred, y)[0]) if np.std(pred) > 0 else float("nan"),
        "baseline_mae": float(skm.mean_absolute_error(y, np.full_like(y, train_mean))),
    }
    if classes:
        figures["accuracy"] = float(np.mean(np.round(y, 1) == np.round(pred, 1)))
    return figures


def interval_metrics(y: np.ndarray, low: np.ndarray, high: np.ndarray, level: float) -> dict[str, float]:
    """Coverage (share of true scores inside [low, high]) and mean width of intervals at ``level``."""
    return {"level": float(level), "coverage": float(np.mean((y >= low) & (y <= high))),
            "mean_width": float(np.mean(high - low))}


def accepted_curve(Y: np.ndarray, L: np.ndarray, confidence: np.ndarray) -> dict[str, float]:
    """Micro-F1 of the posters accepted when the least ``confidence`` ones go to a person, at each of
    ``ACCEPTED_SHARES`` (``"0.5"``: the most confident half), ties broken by position."""
    order = np.argsort(-confidence, kind="stable")
    curve = {}
    for share in ACCEPTED_SHARES:
        kept = order[:max(1, int(round(share * len(order))))]
        curve[f"{share:.1f}"] = float(skm.f1_score(Y[kept], L[kept], average="micro", zero_division=0))
    return curve


def summarise_folds(runs: list[dict]) -> dict:
    """Mean and standard deviation of every numeric leaf over cross-validation runs."""
    def walk(items: list):
        first = items[0]
        if isinstance(first, dict):
            return {k: walk([it[k] for it in items]) for k in first}
        values = np.asarray(items, dtype=float)
        return {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values))}

    return walk(runs)
