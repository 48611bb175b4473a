"""Models that learn from the poster's pixels: a small CNN, an MLP, and a fine-tuned pretrained backbone.

Each is a multi-label genre estimator with the scikit-learn contract, like ``estimators.GenreClassifier``:
hyper-parameters are set in ``__init__`` only (``get_params``/``clone`` work), what is learned ends
in ``_``, ``fit(X, Y)`` returns ``self``, ``predict_proba`` gives a probability per genre and
``predict`` 0/1 genres by the label rule (``fitted.LabelRule``).

``X`` is uint8 posters (N, 3, H, W), as ``decode_posters`` gives them; ``Y`` a 0/1 genre matrix.
An estimator learns at the size it is given and predicts at that size only; ``default_size`` is the
size its recipe was chosen for. ``fit`` keeps ``valid_size`` of the posters (multi-label stratified)
for validation: early stopping, the best checkpoint, and the label rule's thresholds. Training is a
fastai ``Learner`` on in-memory tensors: batches are normalised and augmented on the fly
(horizontal flip, random crop, brightness).

- ``PixelCNN``: the original custom CNN (32-64-128-256 filters) trained from scratch;
- ``PixelMLP``: the original MLP (1024-512-256) on flattened pixels, trained from scratch;
- ``FineTunedBackbone``: a pretrained backbone (``backbones.REGISTRY``) with a new linear head,
  fine-tuned in two stages: body frozen, then unfrozen with discriminative learning rates.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from posterlens.data.images import PosterError, decode
from posterlens.data.splits import holdout_split
from posterlens.features import backbones
from posterlens.models.estimators import FitLog
from posterlens.models.fitted import RULE_DEFAULTS, LabelRule

__all__ = ["decode_posters", "validation_split", "loader", "augment", "normalise", "pixel_batches", "build_cnn",
           "build_mlp", "FineTuneNet", "body_and_head", "PixelClassifier", "PixelCNN", "PixelMLP", "scratch_fit",
           "FineTunedBackbone"]

VALID_SIZE = 0.1  # share of the posters ``fit`` keeps for validation
PREDICT_BATCH = 32
PIXELS_01 = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # scratch models: pixels scaled to 0..1, as in the original
SCHEDULES = ("plateau", "one_cycle")


def decode_posters(paths: list[str], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Posters as uint8 (N, 3, H, W) at ``size`` (width, height), decoded in threads; and which worked."""
    def one(path: str) -> np.ndarray | None:
        try:
            return np.asarray(decode(path, Path(path).read_bytes(), size)).transpose(2, 0, 1)
        except (PosterError, OSError):
            return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        decoded = list(pool.map(one, paths))
    ok = np.array([d is not None for d in decoded], dtype=bool)
    blank = np.zeros((3, size[1], size[0]), np.uint8)
    return np.stack([d if d is not None else blank for d in decoded]), ok


def validation_split(Y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, valid) indices, multi-label stratified: what ``fit`` trains and validates on."""
    return holdout_split(Y, fraction, seed)


# --- batches -------------------------------------------------------------------------------------

class _Rows(torch.utils.data.Dataset):
    """The rows ``idx`` of in-memory tensors, indexed a whole batch at a time (no copy of the posters)."""

    def __init__(self, X: np.ndarray, Y: np.ndarray, idx: np.ndarray):
        self.X, self.Y, self.idx = torch.as_tensor(X), torch.as_tensor(Y), torch.as_tensor(idx)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, positions):
        rows = self.idx[positions]
        return self.X[rows], self.Y[rows]


def loader(X: np.ndarray, Y: np.ndarray, idx: np.ndarray, batch_size: int, shuffle: bool) -> DataLoader:
    """Whole batches of the rows ``idx`` (like ``rows.batches``); a training loader drops its last
    batch when it would hold a single poster (batch norm needs two)."""
    data = _Rows(X, Y, idx)
    order = RandomSampler(data) if shuffle else SequentialSampler(data)
    drop_last = shuffle and len(idx) % batch_size == 1
    return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last=drop_last), batch_size=None)


def augment(x: torch.Tensor) -> torch.Tensor:
    """Per poster: random horizontal flip, crop (zoom 1-1.18x, shifted) and brightness +-10%."""
    n = x.shape[0]
    scale = torch.empty(n, device=x.device).uniform_(0.85, 1.0)
    flip = torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, :, 2] = (torch.rand(n, 2, device=x.device) * 2 - 1) * (1 - scale)[:, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return (x * torch.empty(n, 1, 1, 1, device=x.device).uniform_(0.9, 1.1)).clamp_(0.0, 1.0)


def normalise(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 (or 0..1 float) (N, 3, H, W) -> float ``(x - mean) / std`` (channels_last for the convs)."""
    mean_ = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_ = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
    return ((x - mean_) / std_).contiguous(memory_format=torch.channels_last)


def pixel_batches(mean: tuple, std: tuple):
    """fastai callback: turns the uint8 batch into the network's input, augmenting in training."""
    from fastai.callback.core import Callback

    class PixelBatch(Callback):
        order = 1  # after CastToTensor

        def before_batch(self):
            x = self.xb[0].float().div_(255.0)
            self.learn.xb = (normalise(augment(x) if self.training else x, mean, std),)

    return PixelBatch()


# --- networks ------------------------------------------------------------------------------------

def build_cnn(n_out: int, filters: int = 32, dropout: float = 0.5) -> nn.Module:
    """The original CNN: 4 conv blocks (``filters`` x 1-2-4-8, conv dropout ``dropout / 2``), global
    average pooling, dense 512 -> 256 with ``dropout``."""
    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(c_out),
                             nn.MaxPool2d(2), nn.Dropout(dropout / 2))

    widths = [3] + [filters * 2 ** i for i in range(4)]
    return nn.Sequential(*(block(a, b) for a, b in zip(widths, widths[1:])), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(widths[-1], 512), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(512, 256), nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, n_out))


def build_mlp(n_in: int, n_out: int, dropout: float = 0.5) -> nn.Module:
    """The original MLP on flattened pixels: dense 1024 -> 512 -> 256, batch norm, ``dropout``."""
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in ((n_in, 1024), (1024, 512), (512, 256)):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers, nn.Linear(256, n_out))


class FineTuneNet(nn.Module):
    """The pretrained embedding network (``body``) with a new linear multi-label ``head``."""

    def __init__(self, backbone: backbones.Backbone, n_out: int):
        super().__init__()
        self.body = backbones.create_model(backbone)
        dim = backbone.feature_dim
        self.head = nn.Sequential(nn.BatchNorm1d(dim), nn.Dropout(0.25), nn.Linear(dim, n_out))

    def forward(self, x):
        return self.head(self.body(x))


def body_and_head(net: FineTuneNet) -> list:
    """fastai splitter: two parameter groups, so ``freeze`` trains the head only."""
    from fastai.torch_core import params

    return [params(net.body), params(net.head)]


# --- estimators ----------------------------------------------------------------------------------

class PixelClassifier(ClassifierMixin, BaseEstimator):
    """What the from-pixels estimators share: validation split, fastai training, prediction, label rule.

    A subclass sets its hyper-parameters in ``__init__`` (those read here: ``epochs``, ``lr``,
    ``batch_size``, ``wd``, ``patience``, ``valid_size``, ``max_labels``, ``rank_power``,
    ``threshold_scale``, ``seed``, ``verbose``) and says how its network is built and trained.
    """

    l2 = True  # classic L2 in the gradient (Keras ``kernel_regularizer``) instead of AdamW's decoupled decay

    # what a subclass provides
    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) the recipe was chosen for."""
        raise NotImplementedError

    def _normalisation(self) -> tuple[tuple, tuple]:
        return PIXELS_01

    def _build(self, n_out: int, size: tuple[int, int]) -> nn.Module:
        raise NotImplementedError

    def _splitter(self):
        from fastai.torch_core import trainable_params

        return trainable_params

    def _train(self, learn, best: list) -> list[list]:
        """Run the fastai fits (``best``: early stopping and best checkpoint); per stage, the recorder's epochs."""
        raise NotImplementedError

    # the shared chain
    def fit(self, X: np.ndarray, Y: np.ndarray) -> "PixelClassifier":
        """Train on ``1 - valid_size`` of the posters, validate on the rest, fit the label rule there."""
        from functools import partial

        from posterlens import _compat

        _compat.ensure_torchvision()  # fastai imports torchvision
        from fastai.callback.tracker import EarlyStoppingCallback, SaveModelCallback
        from fastai.data.core import DataLoaders
        from fastai.learner import Learner
        from fastai.optimizer import Adam
        from fastai.torch_core import default_device, set_seed

        X, Y = _posters(X), np.asarray(Y, dtype=np.float32)
        fit_idx, valid_idx = validation_split(Y, self.valid_size, self.seed)
        self.input_size_, self.n_outputs_ = (X.shape[3], X.shape[2]), Y.shape[1]
        set_seed(self.seed)  # the same initial weights on every run
        self.module_ = self._build(Y.shape[1], self.input_size_)
        set_seed(self.seed)
        dls = DataLoaders(loader(X, Y, fit_idx, self.batch_size, shuffle=True),
                          loader(X, Y, valid_idx, self.batch_size, shuffle=False), device=default_device())
        best = [SaveModelCallback(monitor="valid_loss", fname="best"),
                EarlyStoppingCallback(monitor="valid_loss", patience=self.patience)]
        with tempfile.TemporaryDirectory(prefix="posterlens-pixels-") as tmp:  # checkpoints live here
            learn = Learner(dls, self.module_, loss_func=nn.BCEWithLogitsLoss(),
                            opt_func=partial(Adam, decouple_wd=not self.l2), lr=self.lr, wd=self.wd, path=Path(tmp),
                            cbs=[pixel_batches(*self._normalisation())], splitter=self._splitter(),
                            train_bn=False)  # frozen means frozen: no backward pass through a frozen body
            with _quiet(learn, self.verbose):
                stages = [list(values) for values in self._train(learn, best)]
        self.module_.eval()
        self.epochs_run_ = [len(values) for values in stages]
        self.log_ = FitLog([{"stage": s, "epoch": i, "train_loss": float(v[0]), "valid_loss": float(v[1])}
                            for s, values in enumerate(stages) for i, v in enumerate(values)])
        self.rule_ = LabelRule(self.max_labels, self.rank_power, self.threshold_scale).fit(
            Y[valid_idx], self.predict_proba(X[valid_idx]))
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of each genre, (n_posters, n_genres)."""
        from fastai.torch_core import default_device

        X = _posters(X)
        if (X.shape[3], X.shape[2]) != self.input_size_:
            raise ValueError(f"posters are {X.shape[3]}x{X.shape[2]}; this model was fitted on "
                             f"{self.input_size_[0]}x{self.input_size_[1]}")
        device = default_device()
        self.module_.to(device).eval()
        out = [np.zeros((0, self.n_outputs_), np.float32)]
        with torch.inference_mode():
            for i in range(0, len(X), PREDICT_BATCH):
                x = normalise(torch.as_tensor(X[i:i + PREDICT_BATCH]).to(device), *self._normalisation())
                out.append(torch.sigmoid(self.module_(x)).float().cpu().numpy())
        return np.concatenate(out)

    def labels(self, P: np.ndarray) -> np.ndarray:
        """0/1 genres by the label rule (``rule_``, a ``LabelRule`` as the embedding heads use)."""
        return self.rule_.predict(P)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.labels(self.predict_proba(X))

    @property
    def thresholds_(self) -> np.ndarray:
        return self.rule_.thresholds_

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"thresholds": self.rule_.thresholds_,
                **{f"module.{k}": v.detach().cpu().numpy() for k, v in self.module_.state_dict().items()}}


def _posters(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[1] != 3:
        raise ValueError(f"expected uint8 posters (N, 3, H, W) as decode_posters gives them; got {X.dtype} {X.shape}")
    return X


def _quiet(learn, verbose: bool) -> ExitStack:
    """Unless ``verbose``: no progress bar, no epoch table, and no "Better model found at epoch ..."
    lines (``SaveModelCallback`` prints them)."""
    import contextlib
    import io

    stack = ExitStack()
    if not verbose:
        stack.enter_context(learn.no_bar())
        stack.enter_context(learn.no_logging())
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


class PixelCNN(PixelClassifier):
    """The original custom CNN (``build_cnn``), trained from scratch on 0..1 pixels with classic L2 ``wd``.

    ``schedule="plateau"`` is the original Keras recipe: ``fit`` at a constant learning rate with
    ``ReduceLROnPlateau``; ``"one_cycle"`` uses ``fit_one_cycle``. Both stop early on the validation
    loss (``patience``) and keep the best epoch.
    """

    default_size = (128, 192)

    def __init__(self, filters: int = 32, dropout: float = 0.5, epochs: int = 6, lr: float = 1e-3,
                 batch_size: int = 32, wd: float = 1e-4, schedule: str = "plateau", patience: int = 3,
                 valid_size: float = VALID_SIZE, max_labels: int = RULE_DEFAULTS["max_labels"],
                 rank_power: float = RULE_DEFAULTS["rank_power"], threshold_scale: float = RULE_DEFAULTS["threshold_scale"],
                 seed: int = 42, verbose: bool = False):
        self.filters, self.dropout, self.epochs, self.lr, self.batch_size = filters, dropout, epochs, lr, batch_size
        self.wd, self.schedule, self.patience, self.valid_size = wd, schedule, patience, valid_size
        self.max_labels, self.rank_power, self.threshold_scale = max_labels, rank_power, threshold_scale
        self.seed, self.verbose = seed, verbose

    def _build(self, n_out: int, size: tuple[int, int]) -> nn.Module:
        return build_cnn(n_out, self.filters, self.dropout)

    def _train(self, learn, best: list) -> list[list]:
        return [scratch_fit(learn, self.schedule, self.epochs, self.lr, best)]


class PixelMLP(PixelClassifier):
    """The original MLP (``build_mlp``) on flattened 0..1 pixels, trained from scratch like ``PixelCNN``."""

    default_size = (48, 72)

    def __init__(self, dropout: float = 0.5, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
                 wd: float = 1e-4, schedule: str = "plateau", patience: int = 3, valid_size: float = VALID_SIZE,
                 max_labels: int = RULE_DEFAULTS["max_labels"], rank_power: float = RULE_DEFAULTS["rank_power"],
                 threshold_scale: float = RULE_DEFAULTS["threshold_scale"], seed: int = 42, verbose: bool = False):
        self.dropout, self.epochs, self.lr, self.batch_size = dropout, epochs, lr, batch_size
        self.wd, self.schedule, self.patience, self.valid_size = wd, schedule, patience, valid_size
        self.max_labels, self.rank_power, self.threshold_scale = max_labels, rank_power, threshold_scale
        self.seed, self.verbose = seed, verbose

    def _build(self, n_out: int, size: tuple[int, int]) -> nn.Module:
        return build_mlp(3 * size[0] * size[1], n_out, self.dropout)

    def _train(self, learn, best: list) -> list[list]:
        return [scratch_fit(learn, self.schedule, self.epochs, self.lr, best)]


def scratch_fit(learn, schedule: str, epochs: int, lr: float, best: list) -> list:
    """One fit of a from-scratch model; returns the recorder's per-epoch values."""
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from fastai.callback.tracker import ReduceLROnPlateau

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if schedule == "one_cycle":
        learn.fit_one_cycle(epochs, lr, cbs=best)
    else:
        learn.fit(epochs, lr, cbs=[*best, ReduceLROnPlateau(monitor="valid_loss", patience=1, factor=5.0)])
    return list(learn.recorder.values)


class FineTunedBackbone(PixelClassifier):
    """A pretrained backbone (by registered name) with a new linear head, fine-tuned in two stages.

    ``head_epochs`` of ``fit_one_cycle`` at ``lr`` with the body frozen, then at most ``epochs``
    unfrozen at discriminative learning rates ``slice(lr / 200, lr / 2)``, stopping early on the
    validation loss (``patience``) and keeping the best epoch. Pixels are normalised as the
    backbone's weights expect; weight decay is AdamW's.
    """

    l2 = False

    def __init__(self, backbone: str = "efficientnet_lite0", head_epochs: int = 1, epochs: int = 1, lr: float = 2e-3,
                 batch_size: int = 16, wd: float = 0.01, patience: int = 2, valid_size: float = VALID_SIZE,
                 max_labels: int = RULE_DEFAULTS["max_labels"], rank_power: float = RULE_DEFAULTS["rank_power"],
                 threshold_scale: float = RULE_DEFAULTS["threshold_scale"], seed: int = 42, verbose: bool = False):
        self.backbone, self.head_epochs, self.epochs, self.lr, self.batch_size = backbone, head_epochs, epochs, lr, batch_size
        self.wd, self.patience, self.valid_size = wd, patience, valid_size
        self.max_labels, self.rank_power, self.threshold_scale = max_labels, rank_power, threshold_scale
        self.seed, self.verbose = seed, verbose

    @property
    def default_size(self) -> tuple[int, int]:
        spec = backbones.resolve(self.backbone)
        return spec.width, spec.height

    def _normalisation(self) -> tuple[tuple, tuple]:
        spec = backbones.resolve(self.backbone)
        return spec.mean, spec.std

    def _build(self, n_out: int, size: tuple[int, int]) -> nn.Module:
        return FineTuneNet(backbones.resolve(self.backbone), n_out)

    def _splitter(self):
        return body_and_head

    def _train(self, learn, best: list) -> list[list]:
        from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)

        learn.freeze()
        learn.fit_one_cycle(self.head_epochs, self.lr)
        stages = [list(learn.recorder.values)]
        learn.unfreeze()
        learn.fit_one_cycle(self.epochs, slice(self.lr / 200, self.lr / 2), cbs=best)
        return stages + [list(learn.recorder.values)]
