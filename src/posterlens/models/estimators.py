"""Genre and score estimators on poster embeddings, with the scikit-learn contract.

Hyper-parameters are set in ``__init__`` and nowhere else (``get_params``/``clone`` work);
what is learned ends in ``_``; ``fit`` returns ``self``. What an estimator learned is a
``fitted`` head (``head_``): flat numpy arrays (``to_arrays``; model files are safetensors,
loading never unpickles) and the numpy that predicts from them, so predicting needs
neither torch nor scikit-learn. ``from_arrays`` rebuilds a fitted estimator from the arrays
and its parameters.

- ``GenreClassifier`` owns the whole genre chain: standardise -> a linear layer (or one
  hidden layer) trained with fastai's ``fit_one_cycle`` -> per-genre Platt calibration on
  out-of-fold logits -> the label rule (``LabelRule``), tuned on the same out-of-fold
  probabilities. ``predict_proba`` gives calibrated probabilities, ``predict`` 0/1 labels.
- ``ScoreRegressor``: a scikit-learn ``Pipeline`` (standardise -> PCA -> Nystroem RBF
  features -> ridge): memory and time grow linearly with the number of posters.
- ``ScoreClassifier``: the original design, each distinct score a class (fastai, cross-entropy).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from posterlens.data.splits import calibration_splits
from posterlens.models.fitted import (
    PARAM_RULES,
    RULE_DEFAULTS,
    GenreHead,
    LabelRule,
    Network,
    ScoreClassesHead,
    ScoreHead,
    sigmoid,
    standardised,
)

__all__ = ["GenreClassifier", "ScoreRegressor", "ScoreClassifier", "SCORE_ESTIMATORS", "FitLog", "fit_module", "torch_network"]


def _standardiser(X: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (1 where constant), summed in float64 over row chunks: no full-size temporaries."""
    total, squares = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for start in range(0, len(X), chunk):
        block = X[start:start + chunk]
        total += block.sum(axis=0, dtype=np.float64)
        squares += np.square(block).sum(axis=0, dtype=np.float64)
    mean = total / len(X)
    std = np.sqrt(np.maximum(squares / len(X) - mean ** 2, 0.0))
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


COLLECT_ABOVE = 256 << 20  # bytes of training data above which a fit ends with gc.collect() (~0.3 s each)


@dataclass
class FitLog:
    """Per-epoch training curve from fastai's recorder."""

    rows: list[dict]


def _mlp(n_in: int, n_out: int, hidden: int, dropout: float):
    from torch import nn

    if not hidden:
        return nn.Sequential(nn.Linear(n_in, n_out))
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))


def _batches(X: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool):
    """A PyTorch DataLoader that takes whole batches out of in-memory tensors with ``index_select``.

    (fastai's own DataLoader fetches items one by one: 15x slower for embeddings; indexing
    with a list of rows is about 2x slower than ``index_select``.)
    """
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

    class Rows(TensorDataset):
        def __getitem__(self, rows):
            rows = torch.as_tensor(rows)
            return tuple(t.index_select(0, rows) for t in self.tensors)

    data = Rows(torch.as_tensor(X), torch.as_tensor(y))
    order = RandomSampler(data) if shuffle else SequentialSampler(data)
    return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None)


@contextmanager
def _torch_threads(n: int):
    """Run with ``n`` torch threads, then restore the previous setting.

    The heads are small: one thread trains them as fast as two on an idle CPU, and on a
    busy one two spinning threads made a fit 10-25x slower (measured on 2 cores).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _forget_batch_losses():
    """fastai callback: drop the Recorder's per-batch losses and rates at the end of each epoch.

    It keeps every batch's loss as a tensor, and they added about 40 MB an epoch at 50,000
    posters (0.2 MB a batch); the per-epoch figures the training curve uses are kept.
    """
    from fastai.callback.core import Callback

    class ForgetBatchLosses(Callback):
        order = 100  # after the Recorder

        def after_epoch(self):
            self.learn.recorder.losses.clear()
            self.learn.recorder.lrs.clear()

    return ForgetBatchLosses()


def fit_module(module, X: np.ndarray, y: np.ndarray, loss_func, epochs: int, lr: float, wd: float,
               batch_size: int = 256, seed: int = 42, valid: tuple[np.ndarray, np.ndarray] | None = None,
               threads: int = 1) -> FitLog:
    """Train ``module`` on (X, y) with fastai's ``Learner.fit_one_cycle``; returns the curve."""
    from posterlens import _compat

    _compat.ensure_torchvision()  # fastai imports torchvision
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.torch_core import default_device, set_seed

    set_seed(seed)
    valid = valid if valid is not None else (X[:batch_size], y[:batch_size])
    dls = DataLoaders(_batches(X, y, batch_size, shuffle=True), _batches(*valid, batch_size, shuffle=False),
                      device=default_device())
    learn = Learner(dls, module, loss_func=loss_func, wd=wd, cbs=[_forget_batch_losses()])
    with learn.no_bar(), learn.no_logging(), _torch_threads(threads):
        learn.fit_one_cycle(epochs, lr)
    rows = [{"epoch": i, "train_loss": float(v[0]), "valid_loss": float(v[1])}
            for i, v in enumerate(learn.recorder.values)]
    module.eval()
    del learn, dls
    if X.nbytes > COLLECT_ABOVE:  # fastai keeps reference cycles: free a large fold's copies now, not at the next gc
        gc.collect()
    return FitLog(rows)


def _module_arrays(module) -> dict[str, np.ndarray]:
    return {f"module.{k}": v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def torch_network(network: Network):
    """The torch module of a fitted ``Network`` (for gradients: ``explain`` uses it)."""
    import torch

    hidden = network.layers[0][0].shape[0] if len(network.layers) > 1 else 0
    module = _mlp(network.n_in, network.n_out, hidden, 0.0)
    module.load_state_dict({k[len("module."):]: torch.as_tensor(v) for k, v in network.arrays.items()})
    return module.eval()


def _forward(module, X: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode(), _torch_threads(1):
        return module(torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))).numpy()


# --- genres ---------------------------------------------------------------------------------------

class GenreClassifier(ClassifierMixin, BaseEstimator):
    """Multi-label genre classifier that owns its chain: standardise -> network -> calibration -> labels.

    ``fit(X, Y)`` takes embeddings and a 0/1 genre matrix. The network is a linear layer
    (``hidden=0``) or one hidden layer, trained with BCE (square-root positive-class
    weights with ``pos_weight``) by fastai's ``fit_one_cycle``, for ``epochs`` epochs (fewer
    with a ``max_steps`` budget: ``epochs_for``). Networks trained on the other folds (``calibration_folds`` of
    them) give out-of-fold logits: a per-genre ``sigmoid(a * z + b)`` (Platt) is fitted on them,
    and then the label rule (``LabelRule(max_labels, rank_power, threshold_scale)``) on the
    calibrated out-of-fold probabilities. Folds are taken in turn until they hold
    ``calibration_posters`` posters: every poster of a small set, one fold of a large one (a
    third of 100,000 posters is plenty for a per-genre Platt fit and a threshold, at two
    network fits instead of four). The network that predicts is the one trained on all of ``X``.
    """

    RULES = PARAM_RULES["GenreClassifier"]  # each parameter's range (``settings.check``)

    def __init__(self, hidden: int = 0, dropout: float = 0.5, epochs: int = 20, lr: float = 3e-3,
                 wd: float = 30.0, pos_weight: bool = True, batch_size: int = 256, calibration_folds: int = 3,
                 calibration_posters: int = 20000, max_steps: int = 0, max_labels: int = RULE_DEFAULTS["max_labels"],
                 rank_power: float = RULE_DEFAULTS["rank_power"], threshold_scale: float = RULE_DEFAULTS["threshold_scale"],
                 seed: int = 42):
        self.hidden, self.dropout, self.epochs, self.lr, self.wd = hidden, dropout, epochs, lr, wd
        self.pos_weight, self.batch_size, self.calibration_folds = pos_weight, batch_size, calibration_folds
        self.calibration_posters, self.max_steps = calibration_posters, max_steps
        self.max_labels, self.rank_power, self.threshold_scale = max_labels, rank_power, threshold_scale
        self.seed = seed

    # the network alone
    def _fit_network(self, X: np.ndarray, Y: np.ndarray, valid: tuple[np.ndarray, np.ndarray] | None = None,
                     owned: bool = False):
        """Standardise and train the network; with ``owned``, ``X`` (a copy) is standardised in place."""
        import torch
        from torch import nn

        mean, std = _standardiser(X)
        torch.manual_seed(self.seed)  # the initial weights too: not whatever the global generator holds
        module = _mlp(X.shape[1], Y.shape[1], self.hidden, self.dropout)
        weight = None
        if self.pos_weight:
            pos = Y.mean(axis=0).clip(1e-3, 1 - 1e-3)
            weight = torch.as_tensor(np.sqrt((1 - pos) / pos), dtype=torch.float32)
        v = (standardised(valid[0], mean, std), valid[1].astype(np.float32)) if valid is not None else None
        log = fit_module(module, standardised(X, mean, std, owned), Y.astype(np.float32), nn.BCEWithLogitsLoss(pos_weight=weight),
                         self.epochs_for(len(X)), self.lr, self.wd, self.batch_size, self.seed, v)
        return mean, std, module, log

    def epochs_for(self, n: int) -> int:
        """``epochs``, or fewer where ``max_steps`` (0: no limit) caps a network's optimiser steps on ``n`` posters.

        Off by default: at 100,000 posters all 20 epochs take 127 s and ``max_steps=4000``
        (10 epochs) 80 s, but on 80,000 synthetic posters 8 epochs instead of 20 cost 0.024
        macro-mAP (docs/scaling.md).
        """
        if self.max_steps <= 0:
            return self.epochs
        steps_per_epoch = -(-n // self.batch_size)
        return max(1, min(self.epochs, self.max_steps // steps_per_epoch))

    def out_of_fold_logits(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits from networks that did not see the posters, and the rows they are for.

        The ``calibration_folds`` folds (``splits.calibration_splits``) are taken in turn until they
        hold ``calibration_posters`` posters; those used are kept in ``calibration_splits_``.
        """
        Z, done = np.zeros(Y.shape, dtype=np.float32), np.zeros(len(Y), dtype=bool)
        self.calibration_splits_ = []
        for train, valid in calibration_splits(Y, self.calibration_folds, self.seed):
            mean, std, module, _ = self._fit_network(X[train], Y[train], owned=True)
            Z[valid] = _forward(module, standardised(X[valid], mean, std, inplace=True))
            done[valid] = True
            self.calibration_splits_.append((train, valid))
            if done.sum() >= self.calibration_posters:
                break
        rows = np.flatnonzero(done)
        return Z[rows], rows

    def fit(self, X: np.ndarray, Y: np.ndarray, valid: tuple[np.ndarray, np.ndarray] | None = None) -> "GenreClassifier":
        """Fit the chain; ``valid`` (X, Y) only feeds the training curve's validation loss."""
        X, Y = np.asarray(X, dtype=np.float32), np.asarray(Y, dtype=np.float32)
        if self.calibration_folds < 2:
            raise ValueError(f"calibration_folds must be 2 or more (got {self.calibration_folds})")
        oof, self.oof_rows_ = self.out_of_fold_logits(X, Y)
        mean, std, self.module_, self.log_ = self._fit_network(X, Y, valid)
        scale, bias = self.calibrate(oof, Y[self.oof_rows_])
        self.oof_proba_ = sigmoid(oof * scale + bias)
        rule = LabelRule(self.max_labels, self.rank_power, self.threshold_scale).fit(Y[self.oof_rows_], self.oof_proba_)
        self.head_ = GenreHead(self.get_params(), mean, std, Network(_module_arrays(self.module_)), scale, bias, rule)
        self.n_features_in_ = X.shape[1]
        return self

    @staticmethod
    def calibrate(logits: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Platt scaling per genre, fitted on out-of-fold ``logits``: the (scale, bias) of each genre.

        The strong weight decay and the positive-class weights that rank genres best
        leave probabilities far from observed frequencies; a per-genre ``sigmoid(a*z + b)``
        fixes that without changing any genre's ranking.
        """
        from sklearn.linear_model import LogisticRegression

        scale, bias = np.ones(Y.shape[1], dtype=np.float32), np.zeros(Y.shape[1], dtype=np.float32)
        for j in range(Y.shape[1]):
            if 0 < Y[:, j].sum() < len(Y):
                platt = LogisticRegression(C=100.0).fit(logits[:, j:j + 1], Y[:, j])
                scale[j], bias[j] = platt.coef_[0, 0], platt.intercept_[0]
        return scale, bias

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probability of each genre, (n_posters, n_genres)."""
        return self.head_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """0/1 genres by the label rule."""
        return self.head_.predict(X)

    def labels(self, P: np.ndarray) -> np.ndarray:
        """The label rule on probabilities already computed (train, evaluate and predict share it)."""
        return self.head_.labels(P)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return self.head_.to_arrays()

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], params: dict) -> "GenreClassifier":
        clf = cls(**params)
        clf.head_ = GenreHead.from_arrays(arrays, clf.get_params())
        clf.n_features_in_ = clf.head_.n_features_in_
        return clf


# --- score ---------------------------------------------------------------------------------------

# Fitted attributes of each pipeline step that ``fitted.ScoreHead`` predicts from.
_STEP_STATE = {
    "StandardScaler": ("mean_", "scale_", "n_features_in_"),
    "PCA": ("mean_", "components_"),
    "Nystroem": ("components_", "normalization_"),
    "Ridge": ("coef_", "intercept_"),
}


class ScoreRegressor(RegressorMixin, BaseEstimator):
    """IMDb score: standardise -> PCA(``components``) -> ``kernel_components`` Nystroem RBF features -> ridge.

    An approximation of RBF kernel ridge whose cost grows linearly with the posters
    (exact kernel ridge needs 16 B x N^2 of memory and an O(N^3) solve).
    """

    RULES = PARAM_RULES["ScoreRegressor"]  # each parameter's range (``settings.check``)

    def __init__(self, components: int = 128, kernel_components: int = 500, gamma_scale: float = 1.0,
                 alpha: float = 3.0, seed: int = 0):
        self.components, self.kernel_components = components, kernel_components
        self.gamma_scale, self.alpha, self.seed = gamma_scale, alpha, seed

    def _pipeline(self, n_samples: int, n_features: int):
        from sklearn.decomposition import PCA
        from sklearn.kernel_approximation import Nystroem
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        components = min(self.components, n_samples, n_features)
        return Pipeline([
            ("scale", StandardScaler()),
            ("pca", PCA(components, copy=False, random_state=self.seed)),
            ("kernel", Nystroem(gamma=self.gamma_scale / n_features, n_components=min(self.kernel_components, n_samples),
                                random_state=self.seed)),
            ("ridge", Ridge(alpha=self.alpha)),
        ])

    def fit(self, X: np.ndarray, y: np.ndarray) -> "ScoreRegressor":
        """Fit the pipeline's steps one by one, so that only one scaled copy of ``X`` ever exists.

        (``Pipeline.fit`` adds ``StandardScaler.fit``'s and PCA's full-size temporaries: at
        20,000 posters its peak was 2.4x the embeddings' size above them, this one's 1.1x.)
        """
        X = np.asarray(X, dtype=np.float32)
        offset = float(np.mean(y))
        self.pipeline_ = self._pipeline(*X.shape)
        scale, pca, kernel, ridge = (step for _, step in self.pipeline_.steps)
        for start in range(0, len(X), 8192):
            scale.partial_fit(X[start:start + 8192])
        reduced = pca.fit_transform(scale.transform(X))  # PCA(copy=False) centres the scaled copy in place
        ridge.fit(kernel.fit_transform(reduced), np.asarray(y, dtype=np.float64) - offset)
        arrays = {"offset": np.array([offset])}
        for name, step in self.pipeline_.steps:
            for attr in _STEP_STATE[type(step).__name__]:
                arrays[f"{name}.{attr}"] = np.atleast_1d(np.asarray(getattr(step, attr)))
        self.head_ = ScoreHead.from_arrays(arrays, self.get_params())
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.head_.predict(X)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return self.head_.to_arrays()

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], params: dict) -> "ScoreRegressor":
        reg = cls(**params)
        reg.head_ = ScoreHead.from_arrays(arrays, reg.get_params())
        reg.n_features_in_ = reg.head_.n_features_in_
        return reg


class ScoreClassifier(ClassifierMixin, BaseEstimator):
    """The original design: every distinct score (5.1, 7.8, ...) is a class; cross-entropy.

    The predicted score is the most probable class.
    """

    RULES = PARAM_RULES["ScoreClassifier"]  # each parameter's range (``settings.check``)

    def __init__(self, epochs: int = 20, lr: float = 3e-3, wd: float = 30.0, seed: int = 42):
        self.epochs, self.lr, self.wd, self.seed = epochs, lr, wd, seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> "ScoreClassifier":
        import torch
        from torch import nn

        X = np.asarray(X, dtype=np.float32)
        classes = np.unique(np.round(y, 1)).astype(np.float32)
        target = np.searchsorted(classes, np.round(y, 1).astype(np.float32)).astype(np.int64)
        mean, std = _standardiser(X)
        torch.manual_seed(self.seed)  # the initial weights too
        self.module_ = _mlp(X.shape[1], len(classes), 0, 0.0)
        self.log_ = fit_module(self.module_, standardised(X, mean, std), target,
                               nn.CrossEntropyLoss(), self.epochs, self.lr, self.wd, seed=self.seed)
        self.head_ = ScoreClassesHead(self.get_params(), mean, std, Network(_module_arrays(self.module_)), classes)
        self.classes_, self.n_features_in_ = classes, X.shape[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.head_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.head_.predict(X)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return self.head_.to_arrays()

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], params: dict) -> "ScoreClassifier":
        clf = cls(**params)
        clf.head_ = ScoreClassesHead.from_arrays(arrays, clf.get_params())
        clf.classes_, clf.n_features_in_ = clf.head_.classes_, clf.head_.n_features_in_
        return clf


SCORE_ESTIMATORS = {"regression": ScoreRegressor, "classes": ScoreClassifier}  # by ``TrainConfig.score_mode``
