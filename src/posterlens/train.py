"""Training: embeddings -> genre and score predictors, thresholds, validation, model directory."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from posterlens import backbones, catalog, features, metrics
from posterlens.heads import GenreHead, ScoreClassifier, ScoreRegressor, tune_thresholds
from posterlens.model import PosterModel, save
from posterlens.similar import SimilarIndex

log = logging.getLogger(__name__)

SCORE_MODES = ("regression", "classes")
CURVES_FILE = "training_curves.csv"
TRAINING_SET_FILE = "training_set.csv"


class TrainError(ValueError):
    """Training cannot run on this input."""


@dataclass
class TrainConfig:
    """Settings of a training run (saved in the model's ``config.json``)."""

    backbone: str = backbones.DEFAULT_BACKBONE
    weights: str | None = None
    epochs: int = 20
    folds: int = 0  # 0: one holdout split; K: K-fold cross-validation, then a final fit on all
    holdout: float = 0.2
    seed: int = 42
    score_mode: str = "regression"
    min_genre_count: int = 20
    threshold_folds: int = 10  # inner folds for out-of-fold thresholds (10 beat 5 on macro-F1 in CV)

    def __post_init__(self) -> None:
        if self.score_mode not in SCORE_MODES:
            raise TrainError(f"unknown score mode {self.score_mode!r}: use one of {', '.join(SCORE_MODES)}")
        if self.folds == 1 or self.folds < 0:
            raise TrainError(f"--folds must be 0 (holdout) or 2 or more (got {self.folds})")
        if not 0 <= self.holdout < 1:
            raise TrainError(f"--holdout must be in [0, 1) (got {self.holdout})")


@dataclass
class Dataset:
    """A catalogue's posters with their embeddings (posters that failed to load are dropped)."""

    table: pd.DataFrame
    X: np.ndarray
    keys: list[str]  # content hash of each poster


@dataclass
class TrainResult:
    model_dir: Path
    model: PosterModel
    cv: dict | None
    seconds: dict[str, float]


def load_dataset(catalog_path: Path, images: Path | None, backbone: backbones.Backbone,
                 cache: Path | None = None, progress: bool = True) -> Dataset:
    """Read a catalogue and embed its posters (from the cache where possible)."""
    table = catalog.read_catalog(catalog_path, images)
    emb = features.embed_files(table["path"].tolist(), backbone, cache, progress=progress)
    ok = emb.ok
    if not ok.any():
        raise TrainError(f"{catalog_path}: none of the {len(table)} posters could be read")
    return Dataset(table[ok].reset_index(drop=True), emb.features[ok], [k for k, good in zip(emb.keys, ok) if good])


def choose_genres(table: pd.DataFrame, min_count: int) -> list[str]:
    """Genres with at least ``min_count`` posters; the others are left out with a warning."""
    vocabulary = catalog.genre_vocabulary(table)
    counts = catalog.genre_matrix(table, vocabulary).sum(axis=0)
    kept = [g for g, c in zip(vocabulary, counts) if c >= min_count]
    dropped = [f"{g} ({int(c)})" for g, c in zip(vocabulary, counts) if c < min_count]
    if dropped:
        log.warning("left out %d genre(s) with fewer than %d training posters: %s", len(dropped), min_count, ", ".join(dropped))
    if not kept:
        raise TrainError(f"no genre has {min_count} or more posters: lower --min-genre-count")
    return kept


def holdout_split(Y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/test indices, stratified for multi-label data."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    train, test = next(splitter.split(np.zeros(len(Y)), Y))
    return np.sort(train), np.sort(test)


def kfold_splits(Y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds with iterative stratification for multi-label data."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if folds < 2:
        raise TrainError(f"--folds must be 2 or more (got {folds})")
    return list(MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(Y)), Y))


def genre_head(config: TrainConfig) -> GenreHead:
    """The default genre head, chosen by 5-fold CV on the development set (see docs)."""
    return GenreHead(hidden=0, epochs=config.epochs, lr=3e-3, wd=30.0, pos_weight=True, seed=config.seed)


def score_head(config: TrainConfig) -> ScoreRegressor | ScoreClassifier:
    if config.score_mode == "regression":
        return ScoreRegressor()
    return ScoreClassifier(epochs=config.epochs, wd=30.0, seed=config.seed)


def out_of_fold_logits(X: np.ndarray, Y: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Genre logits for every training poster from a head that did not see it."""
    Z = np.zeros_like(Y)
    for train, valid in kfold_splits(Y, config.threshold_folds, config.seed):
        Z[valid] = genre_head(config).fit(X[train], Y[train]).raw_logits(X[valid])
    return Z


def fit_models(data: Dataset, idx: np.ndarray, genres: list[str], backbone: backbones.Backbone,
               config: TrainConfig, valid_idx: np.ndarray | None = None) -> PosterModel:
    """Fit both heads (and the genre thresholds) on the rows ``idx`` of ``data``."""
    X = data.X[idx]
    Y = catalog.genre_matrix(data.table.iloc[idx], genres)
    valid = None
    if valid_idx is not None and len(valid_idx):
        valid = (data.X[valid_idx], catalog.genre_matrix(data.table.iloc[valid_idx], genres))
    oof = out_of_fold_logits(X, Y, config)
    head = genre_head(config).fit(X, Y, valid=valid).calibrate(oof, Y)
    thresholds = tune_thresholds(Y, 1.0 / (1.0 + np.exp(-(oof * head.scale_ + head.bias_))))
    scores = data.table["score"].to_numpy(dtype=float)[idx]
    has_score = ~np.isnan(scores)
    score = score_head(config).fit(X[has_score], scores[has_score]) if has_score.sum() >= 10 else None
    info = {
        "training": asdict(config),
        "n_train": int(len(idx)),
        "train_genre_counts": {g: int(c) for g, c in zip(genres, Y.sum(axis=0))},
        "train_score_mean": float(scores[has_score].mean()) if has_score.any() else None,
        "data_fingerprint": fingerprint([data.keys[i] for i in idx], Y),
    }
    return PosterModel(backbone, genres, thresholds, head, score, config.score_mode if score else "none", info)


def fingerprint(keys: list[str], Y: np.ndarray) -> str:
    """Identity of the training data: poster contents and their labels."""
    digest = hashlib.sha256()
    rows = [r.tobytes() for r in Y.astype(np.uint8)]
    for key, row in sorted(zip(keys, rows)):
        digest.update(key.encode())
        digest.update(row)
    return digest.hexdigest()[:16]


def evaluate_split(model: PosterModel, data: Dataset, idx: np.ndarray) -> dict:
    """Headline metrics of ``model`` on rows ``idx`` (used for cross-validation)."""
    X = data.X[idx]
    Y = catalog.genre_matrix(data.table.iloc[idx], model.genres)
    P = model.genre_proba(X)
    result = {"genre": metrics.genre_metrics(Y, P, model.genre_labels(P))}
    scores = data.table["score"].to_numpy(dtype=float)[idx]
    if model.score_head is not None and not np.isnan(scores).all():
        ok = ~np.isnan(scores)
        result["score"] = metrics.score_metrics(scores[ok], model.score(X[ok]), model.info["train_score_mean"])
    return result


def similar_index(model: PosterModel, data: Dataset, idx: np.ndarray, seed: int) -> SimilarIndex:
    """Nearest-neighbour index over the training posters, in the genre space."""
    rows = data.table.iloc[idx]
    movies = pd.DataFrame({"id": rows["id"].to_numpy(), "title": rows["title"].to_numpy(),
                           "genres": ["|".join(g) for g in rows["genres"]], "score": rows["score"].to_numpy(),
                           "key": [data.keys[i] for i in idx]})
    return SimilarIndex.build(model.genre_proba(data.X[idx]), movies, seed)


def curves_table(model: PosterModel) -> pd.DataFrame:
    """fit_one_cycle curves of the heads trained with fastai."""
    frames = []
    for name, head in (("genre", model.genre_head), ("score", model.score_head)):
        if head is not None and hasattr(head, "log_"):
            frames.append(pd.DataFrame(head.log_.rows).assign(model=name))
    return pd.concat(frames, ignore_index=True)[["model", "epoch", "train_loss", "valid_loss"]]


def train(catalog_path: Path, images: Path | None, out: Path, config: TrainConfig = TrainConfig(),
          cache: Path | None = None, progress: bool = True) -> TrainResult:
    """Embed, fit, validate and write the model directory."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    backbone = backbones.resolve(config.backbone, config.weights)
    data = load_dataset(catalog_path, images, backbone, cache, progress)
    seconds["embed"] = time.perf_counter() - start
    genres = choose_genres(data.table, config.min_genre_count)
    Y = catalog.genre_matrix(data.table, genres)
    cv = None
    if config.folds:
        runs = []
        for k, (train_idx, test_idx) in enumerate(kfold_splits(Y, config.folds, config.seed)):
            runs.append(evaluate_split(fit_models(data, train_idx, genres, backbone, config), data, test_idx))
            log.info("fold %d/%d: macro-mAP %.3f", k + 1, config.folds, runs[-1]["genre"]["macro_map"])
        cv = metrics.summarise_folds(runs)
        train_idx, test_idx = np.arange(len(Y)), np.array([], dtype=int)
    else:
        train_idx, test_idx = holdout_split(Y, config.holdout, config.seed) if config.holdout else (np.arange(len(Y)), np.array([], dtype=int))
    model = fit_models(data, train_idx, genres, backbone, config, valid_idx=test_idx)
    model.info["holdout_ids"] = data.table["id"].iloc[test_idx].tolist()
    seconds["fit"] = time.perf_counter() - start - seconds["embed"]
    out.mkdir(parents=True, exist_ok=True)
    curves_table(model).to_csv(out / CURVES_FILE, index=False)
    pd.DataFrame({"id": data.table["id"].iloc[train_idx], "key": [data.keys[i] for i in train_idx]}).to_csv(
        out / TRAINING_SET_FILE, index=False)
    extra = {CURVES_FILE: out / CURVES_FILE, TRAINING_SET_FILE: out / TRAINING_SET_FILE}
    for name in similar_index(model, data, train_idx, config.seed).save(out):
        extra[name] = out / name
    if cv is not None:
        (out / "cv_metrics.json").write_text(json.dumps(cv, indent=2))
        extra["cv_metrics.json"] = out / "cv_metrics.json"
    save(model, out, extra)
    seconds["total"] = time.perf_counter() - start
    return TrainResult(out, model, cv, seconds)
