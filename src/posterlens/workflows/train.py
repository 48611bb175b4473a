"""Training: a dataset -> genre and score estimators -> validation -> refit -> model directory.

One way to train: the CLI, the DAG, ``compare`` and ``tune`` all build their estimators
with ``TrainConfig.genre_estimator`` / ``score_estimator`` and fit them with ``fit_models``.
``train`` reads and embeds the catalogue once (or takes a ``Dataset`` already loaded).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from posterlens.data.dataset import NO_GENRES, Dataset, choose_genres
from posterlens.data.splits import holdout_split, kfold_splits, score_folds
from posterlens.errors import TrainError
from posterlens.features.embed import FeatureSpec, load_dataset
from posterlens.models import similar
from posterlens.models.directory import CURVES_FILE, TRAINING_SET_FILE, PosterModel, save
from posterlens.models.similar import SimilarIndex
from posterlens.models.trust import DOMAIN_SHARE, INTERVAL, fit_domain, fit_intervals
from posterlens.workflows import metrics
from posterlens.workflows.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "TrainError", "MIN_SCORES", "fit_models",
           "evaluate_split", "validate", "model_genres", "similar_index", "train"]

log = logging.getLogger(__name__)

MIN_SCORES = 10  # the score model needs at least this many posters with a score
TEXT_SCORE_FOLDS = 3  # --text: out-of-fold score predictions for stacking the text score model


@dataclass
class TrainResult:
    model_dir: Path
    model: PosterModel
    validation: dict | None
    seconds: dict[str, float]


def fit_models(data: Dataset, idx: np.ndarray, genres: list[str], spec: FeatureSpec,
               config: TrainConfig, valid_idx: np.ndarray | None = None, trust: bool = True) -> PosterModel:
    """Fit the genre and score estimators on the rows ``idx`` of ``data``, and with ``trust`` the
    domain head and the score intervals (``models.trust``; ``tune`` and ``compare`` skip them).

    Posters without genres (a score-only catalogue row) train the score model only;
    posters without a score train the genre model only.
    """
    table = data.table.iloc[idx]
    labelled = data.labelled[idx]
    X, Y = data.X[idx][labelled], data.genre_matrix(genres, idx[labelled])
    genre_model = text_model = None
    if genres:  # else a score-only model (a catalogue without genres)
        genre_model = _fit_genres(data, X, Y, genres, config, valid_idx)
    if genres and config.text:
        from posterlens.models.text import TextModel

        if data.texts is None:
            raise TrainError("--text: this dataset has no poster texts (load_dataset(..., text=OcrSettings()))")
        text_model = TextModel.fit_beside(genre_model, data.texts_of(idx[labelled]), Y, genres)
    scores = table["score"].to_numpy(dtype=float)
    has_score = ~np.isnan(scores)
    score_model = intervals = None
    if not genres and has_score.sum() < MIN_SCORES:
        raise TrainError(f"{int(has_score.sum())} posters have a score: a score-only model needs {MIN_SCORES} or more")
    if has_score.sum() >= MIN_SCORES:
        score_model = config.score_estimator().fit(data.X[idx][has_score], scores[has_score])
        if trust:
            intervals = fit_intervals(score_model, data.X[idx][has_score], scores[has_score], config.seed)
        if text_model is not None:
            fit_text_score(text_model, config, data.X[idx][has_score], scores[has_score], data.texts_of(idx[has_score]))
    info = {
        "training": asdict(config),
        "n_train": int(len(idx)),
        "n_train_genres": int(labelled.sum()),
        "n_train_scores": int(has_score.sum()),
        "train_genre_counts": {g: int(c) for g, c in zip(genres, Y.sum(axis=0))},
        "train_score_mean": float(scores[has_score].mean()) if has_score.any() else None,
        "data_fingerprint": fingerprint([data.keys[i] for i in idx], data.genre_matrix(genres, idx)),
    }
    mode = config.score_mode if score_model is not None else "none"
    return PosterModel(spec, genres, None if genre_model is None else genre_model.head_,
                       None if score_model is None else score_model.head_, mode, info,
                       curves_table(genre_model, score_model), text_model,
                       fit_domain(data.X[idx], config.seed) if trust else None, intervals)


def _fit_genres(data: Dataset, X: np.ndarray, Y: np.ndarray, genres: list[str], config: TrainConfig,
                valid_idx: np.ndarray | None):
    """The genre estimator fitted on the posters with genres (``valid_idx`` only feeds its curve)."""
    if len(X) < 2 * config.genre_estimator().calibration_folds:
        raise TrainError(f"{len(X)} posters with genres are too few to train the genre model")
    valid = None
    if valid_idx is not None and len(valid_idx):
        valid = (data.X[valid_idx], data.genre_matrix(genres, valid_idx))
    return config.genre_estimator().fit(X, Y, valid=valid)


def fit_text_score(text_model, config: TrainConfig, X: np.ndarray, y: np.ndarray, texts: list[str | None]) -> None:
    """Stack a text score model with the image one (``TextModel.fit_score``), on out-of-fold
    predictions of the score estimator over ``TEXT_SCORE_FOLDS`` folds of the scored posters."""
    from sklearn.model_selection import cross_val_predict

    folds = score_folds(len(X), TEXT_SCORE_FOLDS, config.seed)
    image_oof = cross_val_predict(config.score_estimator(), X, y, cv=folds)
    text_model.fit_score(texts, y, image_oof, folds)


def fingerprint(keys: list[str], Y: np.ndarray) -> str:
    """Identity of the training data: poster contents and their labels."""
    digest = hashlib.sha256()
    rows = [r.tobytes() for r in Y.astype(np.uint8)]
    for key, row in sorted(zip(keys, rows)):
        digest.update(key.encode())
        digest.update(row)
    return digest.hexdigest()[:16]


def evaluate_split(model: PosterModel, data: Dataset, idx: np.ndarray) -> dict:
    """Headline metrics of ``model`` on rows ``idx`` (holdout and cross-validation): genre figures
    where the model has genres, score figures where it has a score model."""
    table = data.table.iloc[idx]
    X = data.X[idx]
    result = {}
    if model.genre_model is not None:
        labelled = data.labelled[idx]
        Y = data.genre_matrix(model.genres, idx[labelled])
        P = model.genre_proba(X[labelled], data.texts_of(idx[labelled]))
        L = model.genre_labels(P)
        train_Y = data.genre_matrix(model.genres, np.setdiff1d(np.arange(len(data)), idx))
        result["genre"] = {**metrics.genre_metrics(Y, P, L), "genres_per_poster": float(L.sum(axis=1).mean()),
                           "true_genres_per_poster": float(Y.sum(axis=1).mean()),
                           "baselines": metrics.genre_baselines(train_Y.mean(axis=0), Y),
                           "accepted": metrics.accepted_curve(Y, L, model.genre_confidence(P, L))}
    scores = table["score"].to_numpy(dtype=float)
    ok = ~np.isnan(scores)
    if model.score_model is not None and ok.sum() > 1:
        texts = data.texts_of(idx[ok])
        predicted = model.score(X[ok], texts)
        result["score"] = metrics.score_metrics(scores[ok], predicted, model.info["train_score_mean"],
                                                classes=model.score_mode == "classes")
        if model.intervals is not None:
            low, high = model.score_interval(X[ok], predicted, INTERVAL)
            result["score"]["interval"] = metrics.interval_metrics(scores[ok], low, high, INTERVAL)
    if model.domain is not None:
        result["domain"] = {"flagged": float(np.mean(model.domain_score(X) < DOMAIN_SHARE))}
    return result


def similar_index(model: PosterModel, data: Dataset, idx: np.ndarray, seed: int,
                  thumbnails: bool = True) -> SimilarIndex:
    """Nearest-neighbour index over the training posters, in the model's similar-movies space
    (``PosterModel.space``), with each poster's thumbnail unless ``thumbnails`` is off."""
    rows = data.table.iloc[idx]
    movies = pd.DataFrame({"id": rows["id"].to_numpy(), "title": rows["title"].to_numpy(),
                           "genres": ["|".join(g) for g in rows["genres"]], "score": rows["score"].to_numpy(),
                           "key": [data.keys[i] for i in idx]})
    X = data.X[idx]
    thumbs = [similar.thumbnail(path) for path in rows["path"]] if thumbnails else None
    return SimilarIndex.build(model.space(model.genre_proba(X, data.texts_of(idx)), X), movies, seed, thumbs)


def curves_table(genre_model, score_model) -> pd.DataFrame:
    """fit_one_cycle curves of the estimators trained with fastai."""
    frames = []
    for name, estimator in (("genre", genre_model), ("score", score_model)):
        if estimator is not None and hasattr(estimator, "log_"):
            frames.append(pd.DataFrame(estimator.log_.rows).assign(model=name))
    columns = ["model", "epoch", "train_loss", "valid_loss"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def validate(data: Dataset, genres: list[str], spec: FeatureSpec, config: TrainConfig) -> tuple[dict | None, np.ndarray, np.ndarray]:
    """Cross-validation or holdout figures; returns them with the (train, test) rows of the final fit.

    With ``config.refit`` the final fit uses every poster; without it, the holdout's
    training part (so ``posterlens evaluate`` can score the held-out posters later).
    """
    Y = data.genre_matrix(genres)  # splits are stratified on it
    everything, none = np.arange(len(Y)), np.array([], dtype=int)
    if config.folds:
        runs = []
        for k, (train_idx, test_idx) in enumerate(kfold_splits(Y, config.folds, config.seed)):
            runs.append(evaluate_split(fit_models(data, train_idx, genres, spec, config), data, test_idx))
            log.info("fold %d/%d: %s", k + 1, config.folds, _headline(runs[-1]))
        return {"method": f"{config.folds}-fold cross-validation", **metrics.summarise_folds(runs)}, everything, none
    if not config.holdout:
        return None, everything, none
    train_idx, test_idx = holdout_split(Y, config.holdout, config.seed)
    if config.refit:
        model = fit_models(data, train_idx, genres, spec, config)
        figures = evaluate_split(model, data, test_idx)
        return {"method": f"{config.holdout:.0%} holdout (seed {config.seed})", "n_test": int(len(test_idx)), **figures}, everything, none
    return None, train_idx, test_idx


def _headline(figures: dict) -> str:
    """``macro-mAP 0.35, micro-F1 0.52`` and/or ``score MAE 0.75, Spearman 0.38``."""
    parts = []
    if "genre" in figures:
        parts.append(f"macro-mAP {figures['genre']['macro_map']:.3f}, micro-F1 {figures['genre']['micro_f1']:.3f}")
    if "score" in figures:
        parts.append(f"score MAE {figures['score']['mae']:.3f}, Spearman {figures['score']['spearman']:.3f}")
    return "; ".join(parts)


def model_genres(data: Dataset, min_count: int) -> list[str]:
    """The genres to learn: ``choose_genres``, or none where no poster has genres (a score-only model)."""
    if not data.labelled.any():
        if np.isnan(data.scores).all():
            raise TrainError(f"{NO_GENRES}; and no poster has a score (name them Title_8.8.jpg) either: nothing to learn")
        log.info("no poster has genres: training a score-only model")
        return []
    return choose_genres(data.table, min_count)


def train(catalog_path: Path, images: Path | None, out: Path, config: TrainConfig, cache: Path,
          progress: bool = True, data: Dataset | None = None, corrections: str | Path | None = None) -> TrainResult:
    """Embed (unless ``data`` is given: the catalogue already read and embedded with
    ``config.feature_spec()``), validate, fit and write the model directory (atomically:
    ``directory.save``). ``corrections``: a review database (``serve --review``) whose genres and
    scores override the catalogue's (``info["n_corrections"]`` counts the posters)."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    spec = config.feature_spec()
    if data is None:
        ocr = None
        if config.text:
            from posterlens.features.ocr import OcrSettings

            ocr = OcrSettings()
        data = load_dataset(catalog_path, images, spec, cache, progress, ocr)
    seconds["embed"] = time.perf_counter() - start  # and read the posters' text, with --text
    n_corrections = 0
    if corrections is not None:
        from posterlens.data.corrections import apply_corrections

        table, n_corrections = apply_corrections(data.table, corrections)
        data = replace(data, table=table)
    genres = model_genres(data, config.min_genre_count)
    validation, train_idx, test_idx = validate(data, genres, spec, config)
    model = fit_models(data, train_idx, genres, spec, config, valid_idx=test_idx)
    if validation is None and len(test_idx):
        validation = {"method": f"{config.holdout:.0%} holdout (seed {config.seed})", "n_test": int(len(test_idx)),
                      **evaluate_split(model, data, test_idx)}
    model.info["validation"] = validation
    model.info["evaluated_on"] = validation["method"] if validation else "nothing (no holdout, no folds)"
    model.info["holdout_ids"] = data.table["id"].iloc[test_idx].tolist()
    model.info["n_corrections"] = n_corrections
    seconds["fit"] = time.perf_counter() - start - seconds["embed"]
    extra = {
        CURVES_FILE: model.curves,
        TRAINING_SET_FILE: pd.DataFrame({"id": data.table["id"].iloc[train_idx],
                                         "key": [data.keys[i] for i in train_idx]}),
    }
    save(model, out, extra, similar_index(model, data, train_idx, config.seed, config.thumbnails))
    seconds["total"] = time.perf_counter() - start
    return TrainResult(out, model, validation, seconds)

