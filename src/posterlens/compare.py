"""Architecture comparison on one shared split: which model predicts genres best, and at what cost?

Every model sees the same posters: the catalogue's readable posters, the genres kept by
``train.choose_genres`` and one multi-label stratified holdout (``train.holdout_split``,
20%, seed 42). Four kinds of model:

- ``head:<backbone>``: the default genre head on frozen, cached embeddings
  (``train.fit_models``; thresholds tuned on out-of-fold predictions);
- ``finetune:<backbone>``: fastai two-stage fine-tuning of the pretrained backbone with a new
  linear head (stage 1: frozen body; stage 2: unfrozen, discriminative learning rates);
- ``cnn``: the original custom CNN (32-64-128-256 filters) trained from scratch;
- ``mlp``: the original MLP (1024-512-256) on flattened pixels, trained from scratch.

The from-pixels models decode every poster once into an in-memory uint8 array, take batches
by tensor indexing and normalise/augment per batch; they keep 10% of the training part for
validation (early stopping, best checkpoint, genre thresholds). Output: ``compare.csv``,
``compare.md`` and ``compare.png`` in ``out``, plus the table as a DataFrame.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from posterlens import backbones, catalog, features, metrics, safeio, train
from posterlens.heads import GenreClassifier, LabelRule, save_arrays
from posterlens.images import PosterError, decode

log = logging.getLogger(__name__)

HOLDOUT = 0.2  # test share of the catalogue
VALID = 0.1  # validation share of the training part (from-pixels models)
MIN_GENRE_COUNT = 20
QUICK_POSTERS = 100
QUICK_MIN_GENRE_COUNT = 5
INFER_POSTERS = 64
INFER_BATCH = 32
SCRATCH_INPUT = {"cnn": (128, 192), "mlp": (48, 72)}  # width, height
QUICK_FINETUNE_INPUT = (112, 160)
PIXELS_01 = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # cnn and mlp: pixels scaled to 0..1, as in the original
DEFAULT_EPOCHS = {"head": GenreClassifier().epochs, "finetune": 1, "cnn": 6, "mlp": 10}  # finetune: unfrozen epochs after 1 frozen
QUICK_MODELS = ["head:efficientnet_lite0", "head:mobilenet_v2", "finetune:efficientnet_lite0", "cnn", "mlp"]
METRICS = ["macro_map", "macro_f1", "micro_f1", "binary_accuracy", "hamming_loss"]
COLUMNS = ["model", "parameters", "size_mb", "train_s_per_epoch", "infer_ms_per_poster", *METRICS,
           "epochs", "input", "notes"]


class CompareError(ValueError):
    """The comparison cannot run: unknown model name, unreadable catalogue..."""


def default_models() -> list[str]:
    """Every offline backbone's head, fine-tuned EfficientNet-Lite0, the CNN and the MLP."""
    return [f"head:{name}" for name in backbones.REGISTRY] + ["finetune:efficientnet_lite0", "cnn", "mlp"]


def parse_model(name: str) -> tuple[str, backbones.Backbone | None]:
    """``head:<backbone>``, ``finetune:<backbone>``, ``cnn`` or ``mlp`` -> (kind, backbone)."""
    kind, _, backbone = name.partition(":")
    if kind in ("head", "finetune") and backbone:
        try:
            return kind, backbones.resolve(backbone)
        except backbones.BackboneError as err:
            raise CompareError(f"model {name!r}: {err}") from None
    if kind in ("cnn", "mlp") and not backbone:
        return kind, None
    raise CompareError(f"unknown model {name!r}: use head:<backbone>, finetune:<backbone>, cnn or mlp")


# --- the shared data -------------------------------------------------------------------------

@dataclass
class Split:
    """The posters, their genres and the one split every model uses (indices into ``table``)."""

    table: pd.DataFrame
    genres: list[str]
    Y: np.ndarray
    train: np.ndarray  # the training part (heads fit on all of it)
    fit: np.ndarray  # the training part less ``valid`` (from-pixels models fit on this)
    valid: np.ndarray
    test: np.ndarray

    @property
    def paths(self) -> list[str]:
        return self.table["path"].tolist()


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


class PosterPixels:
    """Each poster decoded once per input size, kept in memory."""

    def __init__(self, paths: list[str]):
        self.paths = paths
        self._arrays: dict[tuple[int, int], np.ndarray] = {}

    def at(self, size: tuple[int, int]) -> np.ndarray:
        if size not in self._arrays:
            array, ok = decode_posters(self.paths, size)
            if not ok.all():
                raise CompareError(f"{(~ok).sum()} poster(s) could not be decoded at {size}")
            self._arrays[size] = array
        return self._arrays[size]


def prepare(catalog_path: Path, images: Path | None, quick: bool, seed: int) -> Split:
    """Read the catalogue, drop unreadable posters, choose genres and split once."""
    table = catalog.read_catalog(catalog_path, images)
    if quick and len(table) > QUICK_POSTERS:
        table = table.sample(n=QUICK_POSTERS, random_state=seed).reset_index(drop=True)
    _, ok = decode_posters(table["path"].tolist(), SCRATCH_INPUT["mlp"])
    if not ok.any():
        raise CompareError(f"{catalog_path}: none of the {len(table)} posters could be read")
    if not ok.all():
        log.warning("%d unreadable poster(s) left out", int((~ok).sum()))
    table = table[ok].reset_index(drop=True)
    genres = train.choose_genres(table, QUICK_MIN_GENRE_COUNT if quick else MIN_GENRE_COUNT)
    Y = catalog.genre_matrix(table, genres)
    train_idx, test_idx = train.holdout_split(Y, HOLDOUT, seed)
    fit_pos, valid_pos = train.holdout_split(Y[train_idx], VALID, seed)
    return Split(table, genres, Y, train_idx, train_idx[fit_pos], train_idx[valid_pos], test_idx)


# --- one row of the table --------------------------------------------------------------------

@dataclass
class Row:
    """One model's line in the comparison table."""

    model: str
    scores: dict[str, float]
    parameters: float = math.nan
    size_mb: float = math.nan
    train_s_per_epoch: float = math.nan
    infer_ms_per_poster: float = math.nan
    epochs: str = ""
    input: str = ""
    notes: str = ""

    def record(self) -> dict:
        fields = {k: v for k, v in self.__dict__.items() if k != "scores"}
        return {c: fields[c] if c in fields else self.scores[c] for c in COLUMNS}


def scores(Y: np.ndarray, P: np.ndarray, L: np.ndarray) -> dict[str, float]:
    """Test-set metrics: ranking ones from the probabilities ``P``, set ones from the labels ``L``."""
    return metrics.genre_metrics(Y, P, L)


def state_size_mb(arrays: dict[str, np.ndarray]) -> float:
    """Size of the arrays written as safetensors."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.safetensors"
        save_arrays(arrays, path)
        return path.stat().st_size / 1e6


def module_arrays(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def inference_ms(predict: Callable[[list[str]], np.ndarray], paths: list[str]) -> float:
    """Milliseconds per poster from image file to probabilities, after one warm-up batch."""
    paths = paths[:INFER_POSTERS]
    predict(paths[:INFER_BATCH])
    start = time.perf_counter()
    predict(paths)
    return (time.perf_counter() - start) / len(paths) * 1000


# --- heads on frozen embeddings --------------------------------------------------------------

def run_head(backbone: backbones.Backbone, split: Split, epochs: int, cache: Path, seed: int, progress: bool) -> Row:
    """The genre model on cached embeddings, fitted by ``train.fit_models`` (the one way to train)."""
    start = time.perf_counter()
    spec = features.FeatureSpec((backbone,))
    emb = features.embed(split.paths, spec, cache, progress=progress)
    if not emb.ok.all():
        raise CompareError(f"{backbone.name}: {(~emb.ok).sum()} poster(s) could not be embedded")
    embed_s = time.perf_counter() - start
    data = train.Dataset(split.table, emb.features, emb.keys)
    config = train.TrainConfig(backbones=[backbone.name], genre={"epochs": epochs}, seed=seed)
    start = time.perf_counter()
    model = train.fit_models(data, split.train, split.genres, spec, config)
    fit_s = time.perf_counter() - start
    P = model.genre_proba(data.X[split.test])
    runners = [features.make_runner(backbone, cache)]

    def predict(paths: list[str]) -> np.ndarray:
        fresh = features.embed(paths, spec, cache, batch_size=INFER_BATCH, progress=False, runners=runners,
                               use_cache=False)
        return model.genre_proba(fresh.features)

    head = model.genre_model
    backbone_params = count_parameters(backbones.create_model(backbone))
    return Row(
        model=f"head:{backbone.name}", scores=scores(split.Y[split.test], P, model.genre_labels(P)),
        parameters=sum(w.size + b.size for w, b in head.network.layers), size_mb=state_size_mb(head.to_arrays()),
        train_s_per_epoch=fit_s / epochs, infer_ms_per_poster=inference_ms(predict, _test_paths(split)),
        epochs=str(epochs), input=f"{backbone.width}x{backbone.height}",
        notes=(f"head only; frozen shared backbone {backbone_params / 1e6:.1f}M params; embeddings "
               + (f"computed in {embed_s:.0f} s" if emb.computed else "from cache") + "; label rule: out-of-fold"),
    )


def _test_paths(split: Split) -> list[str]:
    return split.table["path"].iloc[split.test].tolist()


# --- from-pixels models: networks ------------------------------------------------------------

def build_cnn(n_out: int) -> nn.Module:
    """The original CNN: 4 conv blocks (32-64-128-256), global average pooling, dense 512 -> 256."""
    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(c_out),
                             nn.MaxPool2d(2), nn.Dropout(0.25))

    return nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 256),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(256, 512), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(256, n_out))


def build_mlp(n_in: int, n_out: int) -> nn.Module:
    """The original MLP on flattened pixels: dense 1024 -> 512 -> 256, batch norm, dropout 0.5."""
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in ((n_in, 1024), (1024, 512), (512, 256)):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(), nn.Dropout(0.5)]
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


# --- from-pixels models: data and training ---------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """How one from-pixels model is fed and trained."""

    size: tuple[int, int]  # input width, height
    mean: tuple[float, float, float]  # on 0..1 pixels
    std: tuple[float, float, float]
    epochs: int  # most epochs (finetune: unfrozen epochs)
    lr: float
    batch_size: int
    wd: float = 0.01
    l2: bool = False  # classic L2 in the gradient (Keras ``kernel_regularizer``) instead of AdamW decay
    head_epochs: int = 0  # finetune: epochs with the body frozen first
    patience: int = 3  # early stopping

    @property
    def input(self) -> str:
        return f"{self.size[0]}x{self.size[1]}"


def loader(X: np.ndarray, Y: np.ndarray, batch_size: int, shuffle: bool) -> DataLoader:
    """Whole batches sliced out of in-memory tensors (like ``heads._batches``); a training
    loader drops its last batch when it would hold a single poster (batch norm needs two)."""
    data = TensorDataset(torch.as_tensor(X), torch.as_tensor(Y))
    order = RandomSampler(data) if shuffle else SequentialSampler(data)
    drop_last = shuffle and len(X) % batch_size == 1
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


def normalise(x: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, normalised as the recipe says (channels_last for the convs)."""
    mean = torch.tensor(recipe.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(recipe.std, device=x.device).view(1, 3, 1, 1)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def pixel_batches(recipe: Recipe):
    """fastai callback: turns the uint8 batch into the network's input, augmenting in training."""
    from fastai.callback.core import Callback

    class PixelBatch(Callback):
        order = 1  # after CastToTensor

        def before_batch(self):
            x = self.xb[0].float().div_(255.0)
            self.learn.xb = (normalise(augment(x) if self.training else x, recipe),)

    return PixelBatch()


@dataclass
class Fitted:
    """What training a from-pixels model took."""

    seconds: float
    epochs_run: list[int] = field(default_factory=list)  # per stage


def fit_pixels(net: nn.Module, X: np.ndarray, split: Split, recipe: Recipe, seed: int, progress: bool,
               finetune: bool = False) -> Fitted:
    """Train ``net`` with a fastai ``Learner`` on the fit part, validating on the valid part.

    Scratch models: ``fit`` at a constant learning rate with ``ReduceLROnPlateau``,
    ``EarlyStoppingCallback`` and ``SaveModelCallback`` (the original Keras recipe).
    Fine-tuning: ``fit_one_cycle`` with the body frozen, then unfrozen with discriminative
    learning rates (``slice``), early stopping and the best checkpoint.
    """
    from functools import partial

    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from fastai.callback.tracker import EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.optimizer import Adam
    from fastai.torch_core import default_device, set_seed, trainable_params

    set_seed(seed)
    Y = split.Y.astype(np.float32)
    dls = DataLoaders(loader(X[split.fit], Y[split.fit], recipe.batch_size, shuffle=True),
                      loader(X[split.valid], Y[split.valid], recipe.batch_size, shuffle=False),
                      device=default_device())
    best = [SaveModelCallback(monitor="valid_loss", fname="best"),
            EarlyStoppingCallback(monitor="valid_loss", patience=recipe.patience)]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="posterlens-compare-") as tmp:  # checkpoints live here
        learn = Learner(dls, net, loss_func=nn.BCEWithLogitsLoss(), opt_func=partial(Adam, decouple_wd=not recipe.l2),
                        lr=recipe.lr, wd=recipe.wd, path=Path(tmp), cbs=[pixel_batches(recipe)],
                        splitter=body_and_head if finetune else trainable_params,
                        train_bn=False)  # frozen means frozen: stage 1 needs no backward pass through the body
        runs = []
        with _quiet(learn, progress):
            if finetune:
                learn.freeze()
                learn.fit_one_cycle(recipe.head_epochs, recipe.lr)
                runs.append(len(learn.recorder.values))
                learn.unfreeze()
                learn.fit_one_cycle(recipe.epochs, slice(recipe.lr / 200, recipe.lr / 2), cbs=best)
            else:
                learn.fit(recipe.epochs, recipe.lr, cbs=[*best, ReduceLROnPlateau(monitor="valid_loss", patience=1, factor=5.0)])
            runs.append(len(learn.recorder.values))
    net.eval()
    return Fitted(time.perf_counter() - start, runs)


def _quiet(learn, progress: bool):
    from contextlib import ExitStack

    stack = ExitStack()
    if not progress:
        stack.enter_context(learn.no_bar())
        stack.enter_context(learn.no_logging())
    return stack


def predict_pixels(net: nn.Module, X: np.ndarray, recipe: Recipe, batch_size: int = INFER_BATCH) -> np.ndarray:
    """Genre probabilities for uint8 posters (N, 3, H, W)."""
    from fastai.torch_core import default_device

    device = default_device()
    net.to(device).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(X), batch_size):
            x = normalise(torch.as_tensor(X[i:i + batch_size]).to(device), recipe)
            out.append(torch.sigmoid(net(x)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def run_pixels(name: str, net: nn.Module, recipe: Recipe, pixels: PosterPixels, split: Split, seed: int, progress: bool,
               finetune: bool = False, notes: str = "") -> Row:
    """Train a from-pixels model, tune its thresholds on the validation part, score it on the test part."""
    X = pixels.at(recipe.size)
    fitted = fit_pixels(net, X, split, recipe, seed, progress, finetune)
    rule = LabelRule().fit(split.Y[split.valid], predict_pixels(net, X[split.valid], recipe))
    P = predict_pixels(net, X[split.test], recipe)

    def predict(paths: list[str]) -> np.ndarray:  # from files: decode, normalise, forward
        return predict_pixels(net, decode_posters(paths, recipe.size)[0], recipe)

    epochs = "+".join(str(n) for n in fitted.epochs_run)
    planned = f"{recipe.head_epochs}+{recipe.epochs}" if finetune else str(recipe.epochs)
    return Row(
        model=name, scores=scores(split.Y[split.test], P, rule.predict(P)),
        parameters=count_parameters(net), size_mb=state_size_mb(module_arrays(net)),
        train_s_per_epoch=fitted.seconds / max(1, sum(fitted.epochs_run)),
        infer_ms_per_poster=inference_ms(predict, _test_paths(split)),
        epochs=epochs if epochs == planned else f"{epochs} of {planned} (early stop)", input=recipe.input,
        notes=f"{notes}; label rule: validation part",
    )


def planned_epochs(kind: str, epochs: int | None, quick: bool) -> int:
    """``epochs`` if given, else 1 in quick mode, else the kind's default (finetune: unfrozen epochs)."""
    return epochs or (1 if quick else DEFAULT_EPOCHS[kind])


def recipe_for(kind: str, backbone: backbones.Backbone | None, epochs: int | None,
               image_size: tuple[int, int] | None, quick: bool) -> Recipe:
    """Input size, normalisation and training settings of a from-pixels model."""
    n = planned_epochs(kind, epochs, quick)
    if kind == "finetune":
        size = image_size or (QUICK_FINETUNE_INPUT if quick else (backbone.width, backbone.height))
        return Recipe(size, backbone.mean, backbone.std, n, lr=2e-3, batch_size=16, head_epochs=1, patience=2)
    if kind == "cnn":
        return Recipe(image_size or SCRATCH_INPUT["cnn"], *PIXELS_01, n, lr=1e-3, batch_size=32, wd=1e-4, l2=True)
    return Recipe(SCRATCH_INPUT["mlp"], *PIXELS_01, n, lr=1e-3, batch_size=64, wd=1e-4, l2=True)


def run_model(name: str, split: Split, pixels: PosterPixels, epochs: int | None, image_size: tuple[int, int] | None,
              quick: bool, cache: Path, seed: int, progress: bool) -> Row:
    kind, backbone = parse_model(name)
    log.info("compare: training %s", name)
    if kind == "head":
        return run_head(backbone, split, planned_epochs(kind, epochs, quick), cache, seed, progress)
    from fastai.torch_core import set_seed

    set_seed(seed)  # the same initial weights on every run
    recipe = recipe_for(kind, backbone, epochs, image_size, quick)
    n = len(split.genres)
    if kind == "finetune":
        return run_pixels(name, FineTuneNet(backbone, n), recipe, pixels, split, seed, progress, finetune=True,
                          notes="pretrained; frozen body, then unfrozen at lr slice(1e-5, 1e-3)")
    if kind == "cnn":
        return run_pixels(name, build_cnn(n), recipe, pixels, split, seed, progress,
                          notes="from scratch; L2 1e-4")
    return run_pixels(name, build_mlp(3 * recipe.size[0] * recipe.size[1], n), recipe, pixels, split, seed, progress,
                      notes="from scratch on flattened pixels; L2 1e-4")


# --- output ----------------------------------------------------------------------------------

def baseline_rows(split: Split) -> list[Row]:
    """The trivial baselines, from the training part's genre frequencies."""
    prior = split.Y[split.train].mean(axis=0)
    result = metrics.genre_baselines(prior, split.Y[split.test])
    return [Row("baseline: top-2 constant", result["top2_constant"], notes="the 2 most frequent training genres, always"),
            Row("baseline: priors", result["priors"], notes="training genre frequencies; labels at 0.5")]


def _display(frame: pd.DataFrame) -> pd.DataFrame:
    """The table with readable numbers (for Markdown)."""
    shown = frame.copy().astype(object)
    fmt = {"parameters": lambda v: f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v:,.0f}", "size_mb": "{:.2f}".format,
           "train_s_per_epoch": "{:.1f}".format, "infer_ms_per_poster": "{:.1f}".format,
           **{m: "{:.3f}".format for m in METRICS}}
    for column, f in fmt.items():
        shown[column] = ["–" if pd.isna(v) else f(v) for v in frame[column]]
    return shown


def describe(split: Split, catalog_path: Path, quick: bool, seed: int, models: list[str] | None,
             epochs: int | None, image_size: tuple[int, int] | None, seconds: float) -> list[str]:
    """The notes under the table: data, split, epochs, inputs, thresholds, timings, command."""
    from fastai.torch_core import default_device

    n = {kind: planned_epochs(kind, epochs, quick) for kind in DEFAULT_EPOCHS}
    args = (f" --models {' '.join(models)}" if models else "") + (f" --epochs {epochs}" if epochs else "") + \
        (f" --image-size {image_size[0]}x{image_size[1]}" if image_size else "") + (" --quick" if quick else "")
    threads = torch.get_num_threads()
    device = "GPU" if default_device().type == "cuda" else f"CPU ({threads} thread{'s' if threads > 1 else ''})"
    return [
        f"- Data: `{catalog_path}`, {len(split.table)} readable posters" + (" (quick: a seeded sample)" if quick else "")
        + f"; {len(split.genres)} genres with at least {QUICK_MIN_GENRE_COUNT if quick else MIN_GENRE_COUNT} posters.",
        f"- One split for every model: `train.holdout_split` (multi-label stratified, {HOLDOUT:.0%} test, seed {seed}): "
        f"{len(split.train)} training / {len(split.test)} test posters. Heads are `GenreClassifier`s fit on the whole training part; "
        f"their calibration and label rule come from {GenreClassifier().calibration_folds}-fold out-of-fold predictions. "
        f"From-pixels models hold out {VALID:.0%} of the training part ({len(split.valid)} posters) for validation: early "
        "stopping, best checkpoint and the label rule (`heads.LabelRule`).",
        "- Heads share a frozen backbone, so their parameters and size_mb count the genre head only (the backbone's "
        "parameters are in the notes).",
        f"- Epochs: heads {n['head']} (`fit_one_cycle`; each run fits {GenreClassifier().calibration_folds} out-of-fold "
        "heads, the final head and the score model, all in train_s_per_epoch); finetune 1 epoch with the body frozen, then at most {n['finetune']} unfrozen "
        "(`fit_one_cycle`, discriminative learning rates, `EarlyStoppingCallback` patience 2, `SaveModelCallback`); "
        f"cnn at most {n['cnn']} and mlp at most {n['mlp']} (`fit` with `ReduceLROnPlateau`, `EarlyStoppingCallback` "
        "patience 3, `SaveModelCallback`, all on valid_loss). The epochs column shows what ran.",
        "- Inputs (width x height): heads and finetune at the backbone's portrait size unless the input column says "
        f"otherwise; cnn {SCRATCH_INPUT['cnn'][0]}x{SCRATCH_INPUT['cnn'][1]} by default; mlp "
        f"{SCRATCH_INPUT['mlp'][0]}x{SCRATCH_INPUT['mlp'][1]} flattened "
        f"({3 * SCRATCH_INPUT['mlp'][0] * SCRATCH_INPUT['mlp'][1]:,} inputs). From-pixels models are augmented per batch "
        "on tensors: horizontal flip, random crop (zoom up to 1.18x), brightness ±10%.",
        f"- Timings on {device}: train_s_per_epoch is the fit's wall time (validation included) over the epochs run; "
        f"infer_ms_per_poster goes from image file to probabilities in batches of {INFER_BATCH} on up to "
        f"{INFER_POSTERS} test posters, without the feature cache (heads: the default engine's backbone + head). size_mb: the model's "
        "state as safetensors.",
        f"- Whole comparison: {seconds / 60:.1f} min. CLI equivalent: `posterlens compare --catalog {catalog_path} --out DIR{args}`",
    ]


def plot(frame: pd.DataFrame, path: Path) -> Path:
    """Macro-mAP and micro-F1 per model (baselines included) and inference time."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 0.45 * len(frame) + 1.5))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(frame))
    left.barh(y - 0.2, frame["macro_map"], 0.4, label="macro-mAP")
    left.barh(y + 0.2, frame["micro_f1"], 0.4, label="micro-F1")
    left.set(yticks=y, yticklabels=frame["model"], xlabel="test score", title="Genre prediction (test part)")
    left.invert_yaxis()
    left.set_xlim(0, 1.35 * np.nanmax(frame[["macro_map", "micro_f1"]].to_numpy()))
    left.legend(loc="lower right")
    right.barh(y, frame["infer_ms_per_poster"].fillna(0.0), color="tab:gray")
    right.set(yticks=y, yticklabels=[], xlabel="ms per poster (file -> probabilities)", title="Inference")
    right.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def write_outputs(frame: pd.DataFrame, notes: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    safeio.write_csv(frame, out / "compare.csv")
    text = ["# Architecture comparison", "", _display(frame).to_markdown(index=False), "", *notes, "",
            "![comparison](compare.png)", ""]
    safeio.write_text(out / "compare.md", "\n".join(text))
    plot(frame, out / "compare.png")


def compare(catalog_path: Path, images: Path | None, out: Path, *, cache: Path, models: list[str] | None = None,
            epochs: int | None = None, image_size: tuple[int, int] | None = None, quick: bool = False,
            seed: int = 42, progress: bool = True) -> pd.DataFrame:
    """Train and score every model on one shared split; write compare.csv/.md/.png to ``out``."""
    from posterlens import _compat

    _compat.ensure_torchvision()  # fastai imports torchvision
    start = time.perf_counter()
    names = list(models or (QUICK_MODELS if quick else default_models()))
    for name in names:
        parse_model(name)  # fail before any work on a bad name
    cache = Path(cache)
    split = prepare(Path(catalog_path), images, quick, seed)
    pixels = PosterPixels(split.paths)
    rows = [run_model(name, split, pixels, epochs, image_size, quick, cache, seed, progress) for name in names]
    frame = pd.DataFrame([r.record() for r in rows + baseline_rows(split)], columns=COLUMNS)
    frame["parameters"] = frame["parameters"].astype("Int64")
    notes = describe(split, Path(catalog_path), quick, seed, models, epochs, image_size, time.perf_counter() - start)
    write_outputs(frame, notes, Path(out))
    return frame
