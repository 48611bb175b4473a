"""Architecture comparison on one shared split: which model predicts genres best, and at what cost?

Every model sees the same posters: the catalogue's readable posters, the genres kept by
``dataset.choose_genres`` and one multi-label stratified holdout (``splits.holdout_split``,
20%, seed 42). Each model is a scikit-learn estimator fitted on the training part and scored on
the test part by one loop (``run``); four kinds:

- ``head:<backbone>``: the default genre head (``estimators.GenreClassifier``, as ``train`` builds it)
  on frozen, cached embeddings; calibration and label rule from out-of-fold predictions;
- ``finetune:<backbone>``: ``pixels.FineTunedBackbone``, fastai two-stage fine-tuning of the
  pretrained backbone with a new linear head;
- ``cnn``: ``pixels.PixelCNN``, the original custom CNN trained from scratch;
- ``mlp``: ``pixels.PixelMLP``, the original MLP on flattened pixels, trained from scratch.

The from-pixels models read every poster decoded once per input size into an in-memory uint8
array; they keep ``pixels.VALID_SIZE`` of the training part for validation (early stopping,
best checkpoint, label rule). Output: ``compare.csv``, ``compare.md`` and ``compare.png`` in
``out``, plus the table as a DataFrame.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from torch import nn

from posterlens import safeio
from posterlens.data import catalog
from posterlens.data.dataset import choose_genres
from posterlens.data.splits import holdout_split
from posterlens.errors import CompareError
from posterlens.features import backbones
from posterlens.features.embed import FeatureSpec, embed
from posterlens.features.engines import make_runner, resolve_engine
from posterlens.models.estimators import GenreClassifier
from posterlens.models.fitted import save_arrays
from posterlens.models.pixels import (
    PREDICT_BATCH,
    VALID_SIZE,
    FineTunedBackbone,
    PixelCNN,
    PixelMLP,
    decode_posters,
    validation_split,
)
from posterlens.workflows import metrics
from posterlens.workflows.config import TrainConfig

__all__ = ["default_models", "parse_model", "Split", "PosterPixels", "prepare", "Row", "scores", "state_size_mb",
           "count_parameters", "inference_ms", "Entry", "planned_epochs", "number", "head_entry", "pixel_entry",
           "entry", "epochs_column", "run", "baseline_rows", "describe", "plot", "write_outputs", "compare"]

log = logging.getLogger(__name__)

HOLDOUT = TrainConfig.holdout  # test share of the catalogue
MIN_GENRE_COUNT = TrainConfig.min_genre_count
QUICK_POSTERS = 100
QUICK_MIN_GENRE_COUNT = 5
INFER_POSTERS = 64
INFER_BATCH = PREDICT_BATCH
QUICK_FINETUNE_INPUT = (112, 160)
PIXEL_MODELS = {"finetune": FineTunedBackbone, "cnn": PixelCNN, "mlp": PixelMLP}
DEFAULT_EPOCHS = {"head": GenreClassifier().epochs, **{kind: cls().epochs for kind, cls in PIXEL_MODELS.items()}}
QUICK_MODELS = ["head:efficientnet_lite0", "head:mobilenet_v2", "finetune:efficientnet_lite0", "cnn", "mlp"]
METRICS = ["macro_map", "macro_f1", "micro_f1", "binary_accuracy", "hamming_loss"]
COLUMNS = ["model", "parameters", "size_mb", "train_s_per_epoch", "infer_ms_per_poster", *METRICS,
           "epochs", "input", "notes"]


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
    train: np.ndarray  # the training part: every model fits on it
    test: np.ndarray

    @property
    def paths(self) -> list[str]:
        return self.table["path"].tolist()


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
    _, ok = decode_posters(table["path"].tolist(), PixelMLP.default_size)  # the smallest input: cheap
    if not ok.any():
        raise CompareError(f"{catalog_path}: none of the {len(table)} posters could be read")
    if not ok.all():
        log.warning("%d unreadable poster(s) left out", int((~ok).sum()))
    table = table[ok].reset_index(drop=True)
    genres = choose_genres(table, QUICK_MIN_GENRE_COUNT if quick else MIN_GENRE_COUNT)
    Y = catalog.genre_matrix(table, genres)
    train_idx, test_idx = holdout_split(Y, HOLDOUT, seed)
    return Split(table, genres, Y, train_idx, test_idx)


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


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def inference_ms(predict: Callable[[list[str]], np.ndarray], paths: list[str]) -> float:
    """Milliseconds per poster from image file to probabilities, after one warm-up batch."""
    paths = paths[:INFER_POSTERS]
    predict(paths[:INFER_BATCH])
    start = time.perf_counter()
    predict(paths)
    return (time.perf_counter() - start) / len(paths) * 1000


# --- the models: one estimator each ----------------------------------------------------------

@dataclass
class Entry:
    """One model of the comparison: its estimator, how it reads posters, what the table says of it."""

    name: str
    estimator: BaseEstimator  # fit(X, Y), predict_proba(X), labels(P), module_, to_arrays()
    inputs: Callable[[], tuple[np.ndarray, str]]  # the split's posters -> (X, how they were read)
    fresh: Callable[[list[str]], np.ndarray]  # poster files -> X from scratch (what inference costs)
    input: str  # width x height
    notes: str
    rule: str  # what the label rule was tuned on


def planned_epochs(kind: str, epochs: int | None, quick: bool) -> int:
    """``epochs`` if given, else 1 in quick mode, else the kind's default (finetune: unfrozen epochs)."""
    return epochs or (1 if quick else DEFAULT_EPOCHS[kind])


def number(x: float) -> str:
    """1e-05 -> '1e-5' (as a learning rate or weight decay is written)."""
    return np.format_float_scientific(x, trim="-", exp_digits=1)


def head_entry(backbone: backbones.Backbone, split: Split, epochs: int, cache: Path, seed: int,
               progress: bool) -> Entry:
    """The genre model ``train`` builds (``TrainConfig.genre_estimator``) on the backbone's cached embeddings."""
    spec = FeatureSpec((backbone,))
    runners: list = []  # the backbone's engine, built at the first inference

    def inputs() -> tuple[np.ndarray, str]:
        start = time.perf_counter()
        emb = embed(split.paths, spec, cache, progress=progress)
        if not emb.ok.all():
            raise CompareError(f"{backbone.name}: {(~emb.ok).sum()} poster(s) could not be embedded")
        return emb.features, (f"embeddings computed in {time.perf_counter() - start:.0f} s" if emb.computed
                              else "embeddings from cache")

    def fresh(paths: list[str]) -> np.ndarray:
        engine = resolve_engine("auto", spec.backbones, cache)  # int8 where train made it
        runners[:] = runners or [make_runner(backbone, cache, engine)]
        return embed(paths, spec, cache, engine=engine, batch_size=INFER_BATCH, progress=False,
                              runners=runners, use_cache=False).features

    estimator = TrainConfig(genre={"epochs": epochs}, seed=seed).genre_estimator()
    backbone_params = count_parameters(backbones.create_model(backbone))
    return Entry(f"head:{backbone.name}", estimator, inputs, fresh, f"{backbone.width}x{backbone.height}",
                 f"head only; frozen shared backbone {backbone_params / 1e6:.1f}M params", "out-of-fold")


def pixel_entry(name: str, kind: str, backbone: backbones.Backbone | None, pixels: PosterPixels, epochs: int,
                image_size: tuple[int, int] | None, quick: bool, seed: int, progress: bool) -> Entry:
    """A ``pixels`` estimator with its recipe's defaults; input at ``image_size`` (not the MLP's) if given."""
    if kind == "finetune":
        estimator = FineTunedBackbone(backbone.name, epochs=epochs, seed=seed, verbose=progress)
        size = image_size or (QUICK_FINETUNE_INPUT if quick else estimator.default_size)
        notes = (f"pretrained; frozen body, then unfrozen at lr slice({number(estimator.lr / 200)}, "
                 f"{number(estimator.lr / 2)})")
    elif kind == "cnn":
        estimator = PixelCNN(epochs=epochs, seed=seed, verbose=progress)
        size, notes = image_size or estimator.default_size, f"from scratch; L2 {number(estimator.wd)}"
    else:
        estimator = PixelMLP(epochs=epochs, seed=seed, verbose=progress)
        size, notes = estimator.default_size, f"from scratch on flattened pixels; L2 {number(estimator.wd)}"
    return Entry(name, estimator, lambda: (pixels.at(size), ""), lambda paths: decode_posters(paths, size)[0],
                 f"{size[0]}x{size[1]}", notes, "validation part")


def entry(name: str, split: Split, pixels: PosterPixels, epochs: int | None, image_size: tuple[int, int] | None,
          quick: bool, cache: Path, seed: int, progress: bool) -> Entry:
    kind, backbone = parse_model(name)
    n = planned_epochs(kind, epochs, quick)
    if kind == "head":
        return head_entry(backbone, split, n, cache, seed, progress)
    return pixel_entry(name, kind, backbone, pixels, n, image_size, quick, seed, progress)


def epochs_column(estimator: BaseEstimator) -> tuple[str, int]:
    """The epochs column (what ran, and of what was planned after an early stop) and the epochs that ran."""
    if not hasattr(estimator, "epochs_run_"):  # a head always runs its epochs
        return str(estimator.epochs), estimator.epochs
    ran = "+".join(str(n) for n in estimator.epochs_run_)
    planned = f"{estimator.head_epochs}+{estimator.epochs}" if hasattr(estimator, "head_epochs") else str(estimator.epochs)
    return (ran if ran == planned else f"{ran} of {planned} (early stop)"), max(1, sum(estimator.epochs_run_))


def run(model: Entry, split: Split) -> Row:
    """Fit the model on the training part, score it on the test part, time its training and inference."""
    log.info("compare: training %s", model.name)
    X, read = model.inputs()
    estimator = model.estimator
    start = time.perf_counter()
    estimator.fit(X[split.train], split.Y[split.train])
    fit_s = time.perf_counter() - start
    P = estimator.predict_proba(X[split.test])
    epochs, ran = epochs_column(estimator)
    return Row(
        model=model.name, scores=scores(split.Y[split.test], P, estimator.labels(P)),
        parameters=count_parameters(estimator.module_), size_mb=state_size_mb(estimator.to_arrays()),
        train_s_per_epoch=fit_s / ran,
        infer_ms_per_poster=inference_ms(lambda paths: estimator.predict_proba(model.fresh(paths)), _test_paths(split)),
        epochs=epochs, input=model.input,
        notes="; ".join(part for part in (model.notes, read, f"label rule: {model.rule}") if part),
    )


def _test_paths(split: Split) -> list[str]:
    return split.table["path"].iloc[split.test].tolist()


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
    finetune, cnn, mlp = (PIXEL_MODELS[kind]() for kind in ("finetune", "cnn", "mlp"))
    n_valid = len(validation_split(split.Y[split.train], VALID_SIZE, seed)[1])
    threads = torch.get_num_threads()
    device = "GPU" if default_device().type == "cuda" else f"CPU ({threads} thread{'s' if threads > 1 else ''})"
    return [
        f"- Data: `{catalog_path}`, {len(split.table)} readable posters" + (" (quick: a seeded sample)" if quick else "")
        + f"; {len(split.genres)} genres with at least {QUICK_MIN_GENRE_COUNT if quick else MIN_GENRE_COUNT} posters.",
        f"- One split for every model: `splits.holdout_split` (multi-label stratified, {HOLDOUT:.0%} test, seed {seed}): "
        f"{len(split.train)} training / {len(split.test)} test posters. Heads are `GenreClassifier`s fit on the whole training part; "
        f"their calibration and label rule come from {GenreClassifier().calibration_folds}-fold out-of-fold predictions. "
        f"From-pixels models hold out {VALID_SIZE:.0%} of the training part ({n_valid} posters) for validation: early "
        "stopping, best checkpoint and the label rule (`fitted.LabelRule`).",
        "- Heads share a frozen backbone, so their parameters and size_mb count the genre head only (the backbone's "
        "parameters are in the notes).",
        f"- Epochs: heads {n['head']} (`fit_one_cycle`; each run fits {GenreClassifier().calibration_folds} out-of-fold "
        f"heads and the final head, all in train_s_per_epoch); finetune {finetune.head_epochs} epoch(s) with the body "
        f"frozen, then at most {n['finetune']} unfrozen (`fit_one_cycle`, discriminative learning rates, "
        f"`EarlyStoppingCallback` patience {finetune.patience}, `SaveModelCallback`); cnn at most {n['cnn']} and mlp at "
        f"most {n['mlp']} (`fit` with `ReduceLROnPlateau`, `EarlyStoppingCallback` patience {cnn.patience}, "
        "`SaveModelCallback`, all on valid_loss). The epochs column shows what ran.",
        "- Inputs (width x height): heads and finetune at the backbone's portrait size unless the input column says "
        f"otherwise; cnn {cnn.default_size[0]}x{cnn.default_size[1]} by default; mlp "
        f"{mlp.default_size[0]}x{mlp.default_size[1]} flattened ({3 * mlp.default_size[0] * mlp.default_size[1]:,} "
        "inputs). From-pixels models are augmented per batch on tensors: horizontal flip, random crop (zoom up to "
        "1.18x), brightness ±10%.",
        f"- Timings on {device}: train_s_per_epoch is the fit's wall time (validation and label rule included) over "
        "the epochs run; "
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
    safeio.make_dir(out)
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
    rows = [run(entry(name, split, pixels, epochs, image_size, quick, cache, seed, progress), split) for name in names]
    frame = pd.DataFrame([r.record() for r in rows + baseline_rows(split)], columns=COLUMNS)
    frame["parameters"] = frame["parameters"].astype("Int64")
    notes = describe(split, Path(catalog_path), quick, seed, models, epochs, image_size, time.perf_counter() - start)
    write_outputs(frame, notes, Path(out))
    return frame
