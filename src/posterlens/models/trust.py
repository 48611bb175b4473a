"""How far to trust an answer: is the image like the training posters, how wide is the score's
error, how sure is the genre set.

- ``DomainHead``: a distance from the training posters in embedding space, turned into
  ``domain_score``, the share of held-out training posters at least as far (1: typical, 0:
  farther than any). ``in_domain`` is ``domain_score >= DOMAIN_SHARE``, so about that share of
  unseen posters from the training source is flagged. The distance is PCA's: standardise,
  project on ``components`` axes; Hotelling's T² over them (divided by its mean on the
  training posters, ``components``) plus what the axes leave out (divided by its training mean).
- ``ScoreIntervals``: split-conformal intervals, ``score ± q * sigma(x)``, where ``q`` is the
  finite-sample quantile (level ``--interval``) of out-of-fold residuals over ``sigma``: a
  ridge of the out-of-fold |residual| on the score model's first PCA axes and its prediction,
  so a poster like those it got wrong gets a wider interval. In classes mode, a prediction set:
  the classes whose probability is at least ``1 - q`` (``q`` the quantile of out-of-fold ``1 -
  p(true class)``); its lowest and highest class bound the interval.
- ``expected_f1``: the genre answer's confidence, its expected F1 if each genre is present
  with its calibrated probability, independently.

Fitting (``fit_domain``, ``fit_intervals``) needs scikit-learn; predicting is numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posterlens.models.fitted import by_rows, standardised
from posterlens.models.trust_settings import DOMAIN_SHARE, INTERVAL, INTERVAL_RULE

__all__ = ["DOMAIN_SHARE", "INTERVAL", "INTERVAL_RULE", "REFERENCE_POINTS", "DomainHead", "ScoreIntervals",
           "fit_domain", "fit_intervals", "expected_f1", "conformal_quantile", "trust_parts"]

DOMAIN_COMPONENTS = 8  # PCA axes of the domain distance (best of 4-256 by AUROC on non-posters: docs/trust.md)
DOMAIN_FOLDS = 5  # out-of-fold distances of the training posters: the reference of ``domain_score``
DOMAIN_SAMPLE = 20_000  # posters the domain PCA is fitted on, at most (a random sample of larger sets)
INTERVAL_FOLDS = 3  # out-of-fold score predictions the intervals are calibrated on
SIGMA_AXES = 8  # the score model's PCA axes its difficulty (sigma) model reads
REFERENCE_POINTS = 2001  # order statistics kept of a reference distribution (all of them below this many)


def _reference(values: np.ndarray) -> np.ndarray:
    """``values`` sorted, thinned to ``REFERENCE_POINTS`` evenly spaced order statistics."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    if len(values) > REFERENCE_POINTS:
        values = np.quantile(values, np.linspace(0, 1, REFERENCE_POINTS))
    return values.astype(np.float32)


def conformal_quantile(reference: np.ndarray, n: int, level: float) -> float:
    """The ``ceil((n + 1) * level)``-th smallest of ``n`` calibration scores (kept as ``_reference``;
    the largest where that is beyond ``n``): a new poster's score is at most it with probability
    ``level`` or more (split conformal)."""
    k = min(int(np.ceil((n + 1) * level)), n)
    return float(np.quantile(reference, (k - 1) / max(n - 1, 1)))


# --- "is this a poster?" -------------------------------------------------------------------------

@dataclass
class DomainHead:
    """PCA distance from the training posters and its reference distribution (arrays: ``domain.*``)."""

    mean: np.ndarray
    std: np.ndarray
    components: np.ndarray  # (k, n_features)
    variances: np.ndarray  # (k,)
    residual_mean: float  # the mean squared residual off the axes, on the training posters
    reference: np.ndarray  # sorted out-of-fold distances of training posters (``_reference``)

    def distance(self, X: np.ndarray) -> np.ndarray:
        def block(rows: np.ndarray) -> np.ndarray:
            Z = standardised(rows, self.mean, self.std)
            T = Z @ self.components.T
            residual = np.square(Z).sum(axis=1) - np.square(T).sum(axis=1)  # the axes are orthonormal
            return (np.square(T) / self.variances).sum(axis=1) / len(self.variances) + residual / self.residual_mean

        return by_rows(block, X).astype(np.float32)

    def score(self, X: np.ndarray) -> np.ndarray:
        """``domain_score``: the share of held-out training posters at least as far as each poster."""
        below = np.searchsorted(self.reference, self.distance(X), side="left")
        return (1.0 - below / len(self.reference)).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"domain.mean": self.mean, "domain.std": self.std, "domain.components": self.components,
                "domain.variances": self.variances, "domain.residual_mean": np.array([self.residual_mean], np.float32),
                "domain.reference": self.reference}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "DomainHead":
        head = cls(arrays["domain.mean"], arrays["domain.std"], arrays["domain.components"], arrays["domain.variances"],
                   float(arrays["domain.residual_mean"][0]), arrays["domain.reference"])
        n, k = len(head.mean), len(head.variances)
        if head.std.shape != (n,) or head.components.shape != (k, n) or head.reference.ndim != 1 or not len(head.reference) \
                or (head.variances <= 0).any() or head.residual_mean <= 0 or (np.diff(head.reference) < 0).any():
            raise ValueError("the domain arrays do not agree with each other")
        return head


def _pca_head(X: np.ndarray, components: int, seed: int) -> DomainHead:
    """A ``DomainHead`` fitted on ``X`` (its reference still empty)."""
    from sklearn.decomposition import PCA

    mean = X.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = X.std(axis=0, dtype=np.float64).astype(np.float32)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
    Z = standardised(X, mean, std)
    pca = PCA(min(components, len(X) - 1, X.shape[1]), svd_solver="randomized", random_state=seed).fit(Z)
    mean = mean + pca.mean_.astype(np.float32) * std  # fold PCA's centring into the standardisation
    Z -= pca.mean_.astype(np.float32)
    T = Z @ pca.components_.T
    residual = float((np.square(Z).sum(axis=1) - np.square(T).sum(axis=1)).mean())
    return DomainHead(mean, std, pca.components_.astype(np.float32), pca.explained_variance_.astype(np.float32),
                      max(residual, 1e-6), np.zeros(0, dtype=np.float32))


def fit_domain(X: np.ndarray, seed: int = 42, components: int = DOMAIN_COMPONENTS) -> DomainHead:
    """The domain head of the training posters ``X``: its reference is each poster's distance from a
    PCA fitted on the other ``DOMAIN_FOLDS - 1`` folds (at most ``DOMAIN_SAMPLE`` posters)."""
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(seed)
    if len(X) > DOMAIN_SAMPLE:
        X = X[np.sort(rng.choice(len(X), DOMAIN_SAMPLE, replace=False))]
    X = np.asarray(X, dtype=np.float32)
    folds = min(DOMAIN_FOLDS, len(X))
    distances = np.zeros(len(X), dtype=np.float32)
    for train, held_out in KFold(folds, shuffle=True, random_state=seed).split(X):
        distances[held_out] = _pca_head(X[train], components, seed).distance(X[held_out])
    head = _pca_head(X, components, seed)
    head.reference = _reference(distances)
    return head


# --- score intervals ---------------------------------------------------------------------------

@dataclass
class ScoreIntervals:
    """Conformal intervals around the score (arrays: ``interval.*``).

    ``kind`` is ``sigma`` (regression: residual / sigma(x)) or ``set`` (classes: 1 - p(true class)).
    """

    kind: str
    reference: np.ndarray  # sorted out-of-fold nonconformity scores (``_reference``)
    n: int  # how many there were
    sigma_coef: np.ndarray | None = None  # ridge over [SIGMA_AXES PCA axes, prediction, (prediction - centre)^2]
    sigma_intercept: float = 0.0
    sigma_floor: float = 0.0
    centre: float = 0.0  # the mean out-of-fold prediction

    def half_width(self, level: float) -> float:
        return conformal_quantile(self.reference, self.n, level)

    def sigma(self, reduced: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Each poster's expected |residual| (at least ``sigma_floor``), from ``ScoreHead.reduce``'s axes."""
        F = _sigma_features(reduced, predicted, self.centre, len(self.sigma_coef) - 2)
        return np.maximum(F @ self.sigma_coef + self.sigma_intercept, self.sigma_floor)

    def interval(self, predicted: np.ndarray, level: float, reduced: np.ndarray | None = None,
                 proba: np.ndarray | None = None, classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(low, high), clipped to 0-10: ``reduced`` for ``sigma``, class ``proba`` and ``classes`` for ``set``."""
        q = self.half_width(level)
        if self.kind == "set":
            members = proba >= 1.0 - q
            members[np.arange(len(proba)), proba.argmax(axis=1)] = True  # never an empty set
            low = np.where(members, classes, np.inf).min(axis=1)
            high = np.where(members, classes, -np.inf).max(axis=1)
            return low.astype(np.float32), high.astype(np.float32)
        half = q * self.sigma(reduced, predicted)
        return np.clip(predicted - half, 0, 10).astype(np.float32), np.clip(predicted + half, 0, 10).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"interval.reference": self.reference, "interval.n": np.array([self.n], dtype=np.int64)}
        if self.kind == "sigma":
            arrays |= {"interval.sigma_coef": self.sigma_coef.astype(np.float32),
                       "interval.sigma": np.array([self.sigma_intercept, self.sigma_floor, self.centre], np.float32)}
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ScoreIntervals":
        reference, n = arrays["interval.reference"], int(arrays["interval.n"][0])
        if reference.ndim != 1 or not 0 < len(reference) <= n or (np.diff(reference) < 0).any():
            raise ValueError("the interval arrays do not agree with each other")
        if "interval.sigma_coef" not in arrays:
            return cls("set", reference, n)
        intercept, floor, centre = (float(v) for v in arrays["interval.sigma"])
        coef = arrays["interval.sigma_coef"]
        if coef.ndim != 1 or len(coef) < 2 or floor <= 0:
            raise ValueError("the interval arrays do not agree with each other")
        return cls("sigma", reference, n, coef, intercept, floor, centre)


def _sigma_features(reduced: np.ndarray, predicted: np.ndarray, centre: float, axes: int) -> np.ndarray:
    """What sigma reads: the first ``axes`` PCA axes, the prediction and its squared distance from ``centre``."""
    return np.column_stack([reduced[:, :axes], predicted, np.square(predicted - centre)]).astype(np.float32)


def fit_intervals(fitted, X: np.ndarray, y: np.ndarray, seed: int = 42) -> ScoreIntervals:
    """Calibrate intervals for ``fitted`` (a score estimator fitted on (X, y)) on ``INTERVAL_FOLDS``
    folds of (X, y): each poster's prediction by a clone fitted on the other folds. Sigma reads
    the posters through ``fitted``'s own PCA (unsupervised: it never saw a residual), as predicting does."""
    from sklearn.base import clone
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    folds = KFold(min(INTERVAL_FOLDS, len(y)), shuffle=True, random_state=seed).split(X)
    if not hasattr(fitted, "predict_proba"):  # regression
        oof = np.zeros(len(y), dtype=np.float32)
        for train, held_out in folds:
            oof[held_out] = clone(fitted).fit(X[train], y[train]).predict(X[held_out])
        reduced = fitted.head_.reduce(X)
        residual, centre = np.abs(y - oof), float(oof.mean())
        F = _sigma_features(reduced, oof, centre, min(SIGMA_AXES, reduced.shape[1]))
        ridge = Ridge(alpha=10.0).fit(F, residual)
        floor = float(max(np.quantile(ridge.predict(F), 0.05), 1e-3))
        intervals = ScoreIntervals("sigma", np.zeros(0, np.float32), len(y), ridge.coef_.astype(np.float32),
                                   float(ridge.intercept_), floor, centre)
        intervals.reference = _reference(residual / intervals.sigma(reduced, oof))
        return intervals
    p_true = np.zeros(len(y), dtype=np.float32)
    target = np.round(y, 1).astype(np.float32)
    for train, held_out in folds:
        fold_model = clone(fitted).fit(X[train], y[train])
        proba = fold_model.predict_proba(X[held_out])
        column = {float(c): j for j, c in enumerate(fold_model.classes_)}
        p_true[held_out] = [proba[i, column[float(t)]] if float(t) in column else 0.0
                            for i, t in enumerate(target[held_out])]
    return ScoreIntervals("set", _reference(1.0 - p_true), len(y))


def trust_parts(arrays: dict[str, np.ndarray], domain: bool, intervals: str | None, feature_dim: int,
                score_axes: int | None) -> tuple[DomainHead | None, ScoreIntervals | None]:
    """The domain head and intervals a model's trust file holds, checked against its features and its
    score model (``score_axes``: its PCA axes; None for a ``ScoreClassifier``); ValueError where they do not fit."""
    head = parts = None
    if domain:
        head = DomainHead.from_arrays(arrays)
        if len(head.mean) != feature_dim:
            raise ValueError(f"the domain head expects {len(head.mean)} features, the backbones give {feature_dim}")
    if intervals:
        parts = ScoreIntervals.from_arrays(arrays)
        expected = "set" if score_axes is None else "sigma"
        if parts.kind != intervals or parts.kind != expected:
            raise ValueError(f"{parts.kind} intervals where the model needs {expected} ones")
        if expected == "sigma" and len(parts.sigma_coef) - 2 > score_axes:
            raise ValueError("the interval's sigma reads more axes than the score model has")
    return head, parts


# --- genre confidence --------------------------------------------------------------------------

def _count_distribution(P: np.ndarray) -> np.ndarray:
    """Poisson-binomial: row i's probability of each count 0..n_genres of independent events ``P[i]``."""
    dist = np.zeros((len(P), P.shape[1] + 1))
    dist[:, 0] = 1.0
    for j in range(P.shape[1]):
        p = P[:, j:j + 1]
        dist[:, 1:] = dist[:, 1:] * (1 - p) + dist[:, :-1] * p
        dist[:, :1] *= 1 - p
    return dist


def expected_f1(P: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each poster's expected F1 of its predicted genres ``labels`` if genre j is present with
    probability ``P[:, j]``, independently: E[2A / (s + A + B)], A the true genres among the s
    predicted, B the true ones outside (an empty answer for a poster with none scores 1)."""
    def block(rows: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        p, chosen = rows
        g = p.shape[1]
        A = _count_distribution(np.where(chosen, p, 0.0))
        B = _count_distribution(np.where(chosen, 0.0, p))
        s = chosen.sum(axis=1)[:, None, None]
        a, b = np.arange(g + 1)[None, :, None], np.arange(g + 1)[None, None, :]
        total = s + a + b
        f1 = np.where(total > 0, 2 * a / np.maximum(total, 1), 1.0)
        return np.einsum("na,nb,nab->n", A, B, f1)

    P, labels = np.asarray(P, dtype=np.float64), np.asarray(labels) > 0
    if P.shape[1] == 0:
        return np.full(len(P), np.nan, dtype=np.float32)
    out = [block((P[i:i + 4096], labels[i:i + 4096])) for i in range(0, len(P), 4096)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)
