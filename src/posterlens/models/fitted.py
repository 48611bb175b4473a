"""Fitted heads: the arrays an estimator learned, and the numpy that predicts from them.

The estimators in ``heads`` train with fastai and scikit-learn, but what they learn is a
few arrays, and predicting from them is a handful of matrix products. The classes here
hold those arrays and do the products with numpy alone, so loading a model to predict
imports neither torch nor scikit-learn (together about 2.4 s of a one-poster
``posterlens predict``). The estimators predict through the same classes (``head_``), and
the tests check them against the torch module and scikit-learn pipeline they were read from.

Each head is built from the arrays in its safetensors file plus the estimator's parameters
(``from_arrays``) and writes them back (``to_arrays``); ``estimator`` and ``params`` are
what ``config.json`` records about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from posterlens.settings import Choice, Range, Rule

__all__ = ["ROWS", "RULE_DEFAULTS", "PARAM_RULES", "by_rows", "sigmoid", "standardised", "LabelRule", "Network", "GenreHead",
           "ScoreHead", "ScoreClassesHead", "HEADS", "save_arrays"]

ROWS = 8192  # posters per block when predicting: memory stays flat however many are asked for


def by_rows(predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray) -> np.ndarray:
    """``predict`` on blocks of ``ROWS`` rows, stacked (its temporaries never hold all of ``X``)."""
    if len(X) <= ROWS:
        return predict(X)
    return np.concatenate([predict(X[start:start + ROWS]) for start in range(0, len(X), ROWS)])


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def standardised(X: np.ndarray, mean: np.ndarray, std: np.ndarray, inplace: bool = False) -> np.ndarray:
    """``(X - mean) / std`` as float32, in one copy (none with ``inplace`` on a float32 array the caller owns)."""
    out = X if inplace and X.dtype == np.float32 else np.array(X, dtype=np.float32)
    out -= mean
    out /= std
    return out


# The label rule's settings and their defaults (``GenreClassifier``, ``TextFusion`` and the text model
# file take theirs from here).
RULE_DEFAULTS = {"max_labels": 4, "rank_power": 0.5, "threshold_scale": 1.1}


# Each estimator's parameters and their rules (``settings.check``), stated once: the estimators'
# ``RULES``, ``train --config`` files, tune spaces and model directories read them from here.
_RULE_PARAMS = {"max_labels": Range(1, 100, integer=True), "rank_power": Range(0, 10),
                "threshold_scale": Range(0.01, 10)}
PARAM_RULES: dict[str, dict[str, Rule]] = {
    "GenreClassifier": {
        "hidden": Range(0, 65_536, integer=True), "dropout": Range(0, 0.99), "epochs": Range(1, 1000, integer=True),
        "lr": Range(1e-8, 10), "wd": Range(0, 1e6), "pos_weight": Choice((False, True)),
        "batch_size": Range(1, 65_536, integer=True), "calibration_folds": Range(2, 20, integer=True),
        "calibration_posters": Range(1, 100_000_000, integer=True), "max_steps": Range(0, 1_000_000_000, integer=True),
        **_RULE_PARAMS, "seed": Range(0, 2**32 - 1, integer=True),
    },
    "ScoreRegressor": {
        "components": Range(1, 4096, integer=True), "kernel_components": Range(1, 20_000, integer=True),
        "gamma_scale": Range(1e-6, 1e6), "alpha": Range(0, 1e9), "seed": Range(0, 2**32 - 1, integer=True),
    },
    "ScoreClassifier": {
        "epochs": Range(1, 1000, integer=True), "lr": Range(1e-8, 10), "wd": Range(0, 1e6),
        "seed": Range(0, 2**32 - 1, integer=True),
    },
}


class LabelRule:
    """Probabilities -> genres for the poster as a whole.

    Each genre has a threshold: the cut that maximises that genre's F1 on out-of-fold
    probabilities, times ``threshold_scale``. A poster gets the genres over their threshold,
    at most ``max_labels`` of them, and always at least its top genre. Genres are ranked by
    ``p / threshold ** rank_power``: 0 ranks by probability (common genres first), 1 by
    how far each genre clears its own bar (rare genres first); 0.5 sits between.
    """

    def __init__(self, max_labels: int = RULE_DEFAULTS["max_labels"], rank_power: float = RULE_DEFAULTS["rank_power"],
                 threshold_scale: float = RULE_DEFAULTS["threshold_scale"]):
        self.max_labels, self.rank_power, self.threshold_scale = max_labels, rank_power, threshold_scale

    @staticmethod
    def f1_thresholds(Y: np.ndarray, P: np.ndarray) -> np.ndarray:
        """Per genre, the probability threshold that maximises that genre's F1 on (Y, P)."""
        from sklearn.metrics import precision_recall_curve

        thresholds = np.full(Y.shape[1], 0.5, dtype=np.float32)
        for j in range(Y.shape[1]):
            if Y[:, j].sum() == 0:
                continue
            precision, recall, cut = precision_recall_curve(Y[:, j], P[:, j])
            f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
            thresholds[j] = cut[int(np.argmax(f1[:-1]))]
        return thresholds

    def fit(self, Y: np.ndarray, P: np.ndarray) -> "LabelRule":
        self.thresholds_ = np.clip(self.f1_thresholds(Y, P) * self.threshold_scale, 1e-4, 1.0).astype(np.float32)
        return self

    def predict(self, P: np.ndarray) -> np.ndarray:
        """0/1 labels: over threshold, at most ``max_labels``, never none."""
        priority = P / self.thresholds_ ** self.rank_power
        rank = np.argsort(np.argsort(-priority, axis=1), axis=1)
        labels = ((P >= self.thresholds_) & (rank < self.max_labels)) | (rank == 0)
        return labels.astype(np.float32)


class Network:
    """The trained network as (weight, bias) pairs: a linear layer, or two with a ReLU between.

    The arrays keep the torch ``state_dict`` names (``module.0.weight``, ``module.3.bias``):
    layer order is the number in the name. Dropout does nothing at prediction.
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = {k: v for k, v in arrays.items() if k.startswith("module.")}
        order = sorted({int(k.split(".")[1]) for k in self.arrays})
        self.layers = [(self.arrays[f"module.{i}.weight"], self.arrays[f"module.{i}.bias"]) for i in order]
        if not self.layers or any(w.ndim != 2 or b.shape != w.shape[:1] for w, b in self.layers):
            raise ValueError("the network's arrays are not (out, in) weights with matching biases")
        if any(w.shape[1] != prev.shape[0] for (prev, _), (w, _) in zip(self.layers, self.layers[1:])):
            raise ValueError("the network's layers do not chain")

    @property
    def n_in(self) -> int:
        return self.layers[0][0].shape[1]

    @property
    def n_out(self) -> int:
        return self.layers[-1][0].shape[0]

    def __call__(self, X: np.ndarray) -> np.ndarray:
        for i, (weight, bias) in enumerate(self.layers):
            X = X @ weight.T + bias
            if i < len(self.layers) - 1:
                X = np.maximum(X, 0.0)
        return X


@dataclass
class GenreHead:
    """standardise -> network -> per-genre Platt ``sigmoid(scale * z + bias)`` -> the label rule."""

    estimator: ClassVar[str] = "GenreClassifier"
    params: dict
    mean: np.ndarray
    std: np.ndarray
    network: Network
    scale: np.ndarray
    bias: np.ndarray
    rule: LabelRule

    @property
    def n_features_in_(self) -> int:
        return len(self.mean)

    @property
    def thresholds_(self) -> np.ndarray:
        return self.rule.thresholds_

    @property
    def max_labels(self) -> int:
        return self.rule.max_labels

    def raw_logits(self, X: np.ndarray) -> np.ndarray:
        """The network's logits, before calibration."""
        return by_rows(lambda block: self.network(standardised(block, self.mean, self.std)), X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probability of each genre, (n_posters, n_genres)."""
        return sigmoid(self.raw_logits(X) * self.scale + self.bias).astype(np.float32)

    def labels(self, P: np.ndarray) -> np.ndarray:
        """The label rule on probabilities already computed (train, evaluate and predict share it)."""
        return self.rule.predict(P)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.labels(self.predict_proba(X))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "scale": self.scale, "bias": self.bias,
                "thresholds": self.rule.thresholds_, **self.network.arrays}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], params: dict) -> "GenreHead":
        if type(params["max_labels"]) is not int or params["max_labels"] < 1:
            raise ValueError(f"max_labels must be a whole number of 1 or more (got {params['max_labels']!r})")
        rule = LabelRule(params["max_labels"], float(params["rank_power"]), float(params["threshold_scale"]))
        rule.thresholds_ = arrays["thresholds"]
        head = cls(dict(params), arrays["mean"], arrays["std"], Network(arrays), arrays["scale"], arrays["bias"], rule)
        n = head.network.n_out
        if head.network.n_in != len(head.mean) or len(head.std) != len(head.mean) or \
                not len(head.scale) == len(head.bias) == len(rule.thresholds_) == n:
            raise ValueError("the arrays' shapes do not agree with each other")
        return head


@dataclass
class ScoreHead:
    """The ``ScoreRegressor`` pipeline's transforms in numpy: standardise -> PCA -> RBF Nystroem -> ridge.

    ``arrays`` holds the fitted scikit-learn attributes under ``<step>.<attribute>`` names
    (``scale.mean_``, ``pca.components_``, ``kernel.normalization_``, ``ridge.coef_``...).
    """

    estimator: ClassVar[str] = "ScoreRegressor"
    params: dict
    arrays: dict[str, np.ndarray]
    gamma: float  # the RBF width: ``gamma_scale / n_features`` (``ScoreRegressor._pipeline``)

    @property
    def n_features_in_(self) -> int:
        return int(self.arrays["scale.n_features_in_"][0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return by_rows(self._predict, X)

    def reduce(self, X: np.ndarray) -> np.ndarray:
        """The posters as the score model sees them: standardised, then projected by its PCA."""
        a = self.arrays
        Z = standardised(X, a["scale.mean_"].astype(np.float32), a["scale.scale_"].astype(np.float32))
        return (Z - a["pca.mean_"]) @ a["pca.components_"].T

    def _predict(self, X: np.ndarray) -> np.ndarray:
        a = self.arrays
        Z = self.reduce(X)
        centres = a["kernel.components_"]
        distances = (np.square(Z).sum(axis=1)[:, None] - 2 * Z @ centres.T + np.square(centres).sum(axis=1)[None, :])
        K = np.exp(-self.gamma * np.maximum(distances, 0.0)) @ a["kernel.normalization_"].T
        return (K @ a["ridge.coef_"] + a["ridge.intercept_"][0] + a["offset"][0]).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return dict(self.arrays)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], params: dict) -> "ScoreHead":
        n = int(arrays["scale.n_features_in_"][0])
        if n < 1 or not float(params["gamma_scale"]) > 0:
            raise ValueError(f"scale.n_features_in_ = {n} and gamma_scale = {params['gamma_scale']}: both must be positive")
        head = cls(dict(params), dict(arrays), float(params["gamma_scale"]) / n)
        a = head.arrays
        shapes_agree = (a["scale.mean_"].shape == a["scale.scale_"].shape == (n,)
                        and a["pca.components_"].shape[1] == n == len(a["pca.mean_"])
                        and a["kernel.components_"].shape[1] == a["pca.components_"].shape[0]
                        and a["kernel.normalization_"].shape[1] == a["kernel.components_"].shape[0]
                        and a["ridge.coef_"].shape == (a["kernel.normalization_"].shape[0],))
        if not shapes_agree:
            raise ValueError("the arrays' shapes do not agree with each other")
        return head


@dataclass
class ScoreClassesHead:
    """``ScoreClassifier``: standardise -> linear layer -> the most probable score class."""

    estimator: ClassVar[str] = "ScoreClassifier"
    params: dict
    mean: np.ndarray
    std: np.ndarray
    network: Network
    classes_: np.ndarray

    @property
    def n_features_in_(self) -> int:
        return len(self.mean)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = by_rows(lambda block: self.network(standardised(block, self.mean, self.std)), X)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "classes": self.classes_, **self.network.arrays}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], params: dict) -> "ScoreClassesHead":
        head = cls(dict(params), arrays["mean"], arrays["std"], Network(arrays), arrays["classes"])
        if head.network.n_in != len(head.mean) or head.network.n_out != len(head.classes_):
            raise ValueError("the arrays' shapes do not agree with each other")
        return head


def save_arrays(arrays: dict[str, np.ndarray], path) -> None:
    """Write arrays as safetensors."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


HEADS = {cls.estimator: cls for cls in (GenreHead, ScoreHead, ScoreClassesHead)}
