"""Genre and score predictors on poster embeddings, with the scikit-learn estimator contract.

Hyperparameters are set in ``__init__``; what is learned ends in ``_``; ``fit`` returns
``self``. Each predictor can write its learned arrays to a flat dict of numpy arrays
(``arrays()``) and be rebuilt from one (``from_arrays``), so model files are safetensors
and loading never unpickles.

- ``GenreHead``: a linear layer (or one hidden layer with dropout) trained with fastai's
  ``Learner.fit_one_cycle`` and a multi-label BCE loss, on standardised embeddings.
- ``ScoreRegressor``: RBF kernel ridge regression on a PCA projection of the embeddings.
- ``ScoreClassifier``: the original design, each distinct score a class (fastai, cross-entropy).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posterlens import _compat  # noqa: F401  (before fastai)


def _standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


@dataclass
class FitLog:
    """Per-epoch training curve from fastai's recorder."""

    rows: list[dict]


def _mlp(n_in: int, n_out: int, hidden: int, dropout: float, input_dropout: float):
    from torch import nn

    layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout else []
    if hidden:
        layers += [nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out)]
    else:
        layers += [nn.Linear(n_in, n_out)]
    return nn.Sequential(*layers)


def _batches(X: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool):
    """A PyTorch DataLoader that slices whole batches out of in-memory tensors.

    (fastai's own DataLoader fetches items one by one: 15x slower for embeddings.)
    """
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

    data = TensorDataset(torch.as_tensor(X), torch.as_tensor(y))
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


def fit_module(module, X: np.ndarray, y: np.ndarray, loss_func, epochs: int, lr: float, wd: float,
               batch_size: int = 256, seed: int = 42, valid: tuple[np.ndarray, np.ndarray] | None = None,
               cbs: list | None = None, threads: int = 1) -> FitLog:
    """Train ``module`` on (X, y) with fastai's ``Learner.fit_one_cycle``; returns the curve."""
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.torch_core import default_device, set_seed

    set_seed(seed)
    valid = valid if valid is not None else (X[:batch_size], y[:batch_size])
    dls = DataLoaders(_batches(X, y, batch_size, shuffle=True), _batches(*valid, batch_size, shuffle=False),
                      device=default_device())
    learn = Learner(dls, module, loss_func=loss_func, wd=wd, cbs=cbs or [])
    with learn.no_bar(), learn.no_logging(), _torch_threads(threads):
        learn.fit_one_cycle(epochs, lr)
    rows = [{"epoch": i, "train_loss": float(v[0]), "valid_loss": float(v[1])}
            for i, v in enumerate(learn.recorder.values)]
    module.eval()
    return FitLog(rows)


class GenreHead:
    """Multi-label genre classifier: standardise, then linear (or one hidden layer)."""

    def __init__(self, hidden: int = 0, dropout: float = 0.5, input_dropout: float = 0.0,
                 epochs: int = 20, lr: float = 3e-3, wd: float = 1.0, pos_weight: bool = False,
                 batch_size: int = 256, seed: int = 42):
        self.hidden, self.dropout, self.input_dropout = hidden, dropout, input_dropout
        self.epochs, self.lr, self.wd, self.pos_weight = epochs, lr, wd, pos_weight
        self.batch_size, self.seed = batch_size, seed

    def params(self) -> dict:
        return dict(hidden=self.hidden, dropout=self.dropout, input_dropout=self.input_dropout,
                    epochs=self.epochs, lr=self.lr, wd=self.wd, pos_weight=self.pos_weight,
                    batch_size=self.batch_size, seed=self.seed)

    def fit(self, X: np.ndarray, Y: np.ndarray, valid: tuple[np.ndarray, np.ndarray] | None = None) -> "GenreHead":
        import torch
        from torch import nn

        self.mean_, self.std_ = _standardiser(X)
        self.module_ = _mlp(X.shape[1], Y.shape[1], self.hidden, self.dropout, self.input_dropout)
        weight = None
        if self.pos_weight:
            pos = Y.mean(axis=0).clip(1e-3, None)
            weight = torch.as_tensor(np.sqrt((1 - pos) / pos), dtype=torch.float32)
        loss = nn.BCEWithLogitsLoss(pos_weight=weight)
        scale = lambda a: ((a - self.mean_) / self.std_).astype(np.float32)  # noqa: E731
        v = (scale(valid[0]), valid[1].astype(np.float32)) if valid is not None else None
        self.log_ = fit_module(self.module_, scale(X), Y.astype(np.float32), loss, self.epochs, self.lr,
                               self.wd, self.batch_size, self.seed, v)
        self.scale_ = np.ones(Y.shape[1], dtype=np.float32)  # identity until calibrate()
        self.bias_ = np.zeros(Y.shape[1], dtype=np.float32)
        return self

    def raw_logits(self, X: np.ndarray) -> np.ndarray:
        """The network's logits, before calibration."""
        import torch

        x = torch.as_tensor(((X - self.mean_) / self.std_).astype(np.float32))
        with torch.inference_mode():
            return self.module_.cpu()(x).numpy()

    def calibrate(self, logits: np.ndarray, Y: np.ndarray) -> "GenreHead":
        """Platt scaling per genre, fitted on out-of-fold ``logits``.

        The strong weight decay and the positive-class weights that rank genres best
        leave probabilities far from observed frequencies; a per-genre ``sigmoid(a*z + b)``
        fixes that without changing any genre's ranking.
        """
        from sklearn.linear_model import LogisticRegression

        for j in range(Y.shape[1]):
            if 0 < Y[:, j].sum() < len(Y):
                platt = LogisticRegression(C=100.0).fit(logits[:, j:j + 1], Y[:, j])
                self.scale_[j], self.bias_[j] = platt.coef_[0, 0], platt.intercept_[0]
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Calibrated logits."""
        return self.raw_logits(X) * self.scale_ + self.bias_

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.decision_function(X)))

    def arrays(self) -> dict[str, np.ndarray]:
        state = {f"module.{k}": v.detach().cpu().numpy() for k, v in self.module_.state_dict().items()}
        return {"mean": self.mean_, "std": self.std_, "scale": self.scale_, "bias": self.bias_, **state}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], params: dict) -> "GenreHead":
        import torch

        head = cls(**params)
        head.mean_, head.std_ = arrays["mean"], arrays["std"]
        head.scale_, head.bias_ = arrays["scale"], arrays["bias"]
        weights = [v for k, v in arrays.items() if k.startswith("module.") and k.endswith("weight")]
        head.module_ = _mlp(weights[0].shape[1], weights[-1].shape[0], head.hidden, head.dropout, head.input_dropout)
        head.module_.load_state_dict({k[len("module."):]: torch.as_tensor(v) for k, v in arrays.items()
                                      if k.startswith("module.")})
        head.module_.eval()
        return head


class ScoreRegressor:
    """IMDb score: RBF kernel ridge on the first ``components`` principal components.

    On the development set (5-fold CV) this gave MAE 0.751 and Spearman 0.37, against
    0.761 / 0.35 for a linear ridge and 0.81 for predicting the mean.
    """

    def __init__(self, components: int = 256, alpha: float = 3.0, gamma_scale: float = 1.0):
        self.components, self.alpha, self.gamma_scale = components, alpha, gamma_scale

    def params(self) -> dict:
        return dict(components=self.components, alpha=self.alpha, gamma_scale=self.gamma_scale)

    def _project(self, X: np.ndarray) -> np.ndarray:
        return (((X - self.mean_) / self.std_) @ self.components_.T).astype(np.float32)

    def _kernel(self, A: np.ndarray) -> np.ndarray:
        B = self.support_
        d2 = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T
        return np.exp(-self.gamma_ * np.maximum(d2, 0.0))

    def fit(self, X: np.ndarray, y: np.ndarray) -> "ScoreRegressor":
        from sklearn.decomposition import PCA

        self.mean_, self.std_ = _standardiser(X)
        pca = PCA(min(self.components, *X.shape), random_state=0).fit((X - self.mean_) / self.std_)
        self.components_ = pca.components_.astype(np.float32)
        self.support_ = self._project(X)
        self.gamma_ = np.float32(self.gamma_scale / X.shape[1])
        self.offset_ = np.float32(y.mean())
        K = self._kernel(self.support_).astype(np.float64)
        K[np.diag_indices_from(K)] += self.alpha
        self.dual_ = np.linalg.solve(K, y - self.offset_).astype(np.float32)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._kernel(self._project(X)) @ self.dual_ + self.offset_

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "std": self.std_, "components": self.components_, "support": self.support_,
                "dual": self.dual_, "gamma": np.atleast_1d(self.gamma_), "offset": np.atleast_1d(self.offset_)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], params: dict) -> "ScoreRegressor":
        head = cls(**params)
        head.mean_, head.std_, head.components_ = arrays["mean"], arrays["std"], arrays["components"]
        head.support_, head.dual_ = arrays["support"], arrays["dual"]
        head.gamma_, head.offset_ = np.float32(arrays["gamma"][0]), np.float32(arrays["offset"][0])
        return head


class ScoreClassifier:
    """The original design: every distinct score (5.1, 7.8, ...) is a class; cross-entropy.

    The predicted score is the most probable class.
    """

    def __init__(self, epochs: int = 20, lr: float = 3e-3, wd: float = 1.0, seed: int = 42):
        self.epochs, self.lr, self.wd, self.seed = epochs, lr, wd, seed

    def params(self) -> dict:
        return dict(epochs=self.epochs, lr=self.lr, wd=self.wd, seed=self.seed)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "ScoreClassifier":
        from torch import nn

        self.classes_ = np.unique(np.round(y, 1)).astype(np.float32)
        target = np.searchsorted(self.classes_, np.round(y, 1).astype(np.float32)).astype(np.int64)
        self.mean_, self.std_ = _standardiser(X)
        self.module_ = _mlp(X.shape[1], len(self.classes_), 0, 0.0, 0.0)
        self.log_ = fit_module(self.module_, ((X - self.mean_) / self.std_).astype(np.float32), target,
                               nn.CrossEntropyLoss(), self.epochs, self.lr, self.wd, seed=self.seed)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        import torch

        x = torch.as_tensor(((X - self.mean_) / self.std_).astype(np.float32))
        with torch.inference_mode():
            return torch.softmax(self.module_.cpu()(x), dim=1).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def arrays(self) -> dict[str, np.ndarray]:
        state = {f"module.{k}": v.detach().cpu().numpy() for k, v in self.module_.state_dict().items()}
        return {"mean": self.mean_, "std": self.std_, "classes": self.classes_, **state}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], params: dict) -> "ScoreClassifier":
        import torch

        head = cls(**params)
        head.mean_, head.std_, head.classes_ = arrays["mean"], arrays["std"], arrays["classes"]
        head.module_ = _mlp(len(head.mean_), len(head.classes_), 0, 0.0, 0.0)
        head.module_.load_state_dict({k[len("module."):]: torch.as_tensor(v) for k, v in arrays.items()
                                      if k.startswith("module.")})
        head.module_.eval()
        return head


def tune_thresholds(Y: np.ndarray, P: np.ndarray) -> np.ndarray:
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


def save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write arrays as safetensors."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
