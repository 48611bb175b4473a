"""Training: embeddings -> genre and score estimators -> validation -> refit -> model directory.

One way to train: the CLI, the DAG, ``compare`` and ``tune`` all build their estimators
with ``TrainConfig.genre_estimator`` / ``score_estimator`` and fit them with ``fit_models``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from posterlens import backbones, catalog, features, metrics
from posterlens.heads import GenreClassifier, ScoreClassifier, ScoreRegressor
from posterlens.model import PosterModel, save
from posterlens.similar import SimilarIndex

if TYPE_CHECKING:
    from posterlens.text import OcrSettings

log = logging.getLogger(__name__)

SCORE_MODES = ("regression", "classes")
CURVES_FILE = "training_curves.csv"
TRAINING_SET_FILE = "training_set.csv"
MIN_SCORES = 10  # the score model needs at least this many posters with a score
TEXT_SCORE_FOLDS = 3  # --text: out-of-fold score predictions for stacking the text score model


class TrainError(ValueError):
    """Training cannot run on this input."""


@dataclass
class TrainConfig:
    """Settings of a training run (saved in the model's ``config.json``).

    Estimator hyper-parameters that differ from the estimators' own defaults go in
    ``genre`` / ``score`` (``GenreClassifier`` / ``ScoreRegressor`` parameters).
    """

    backbones: list[str] = field(default_factory=lambda: list(backbones.DEFAULT_FEATURES))
    weights: str | None = None  # weights file, for a single backbone without offline weights
    folds: int = 0  # 0: one holdout split; K: K-fold cross-validation
    holdout: float = 0.2
    refit: bool = True  # after validation, refit on every training poster
    seed: int = 42
    score_mode: str = "regression"
    min_genre_count: int = 20
    genre: dict = field(default_factory=dict)
    score: dict = field(default_factory=dict)
    text: bool = False  # read poster text (rapidocr) and fuse a text genre model with the image one

    def __post_init__(self) -> None:
        if self.score_mode not in SCORE_MODES:
            raise TrainError(f"unknown score mode {self.score_mode!r}: use one of {', '.join(SCORE_MODES)}")
        if self.folds == 1 or self.folds < 0:
            raise TrainError(f"--folds must be 0 (holdout) or 2 or more (got {self.folds})")
        if not 0 <= self.holdout < 1:
            raise TrainError(f"--holdout must be in [0, 1) (got {self.holdout})")
        if self.min_genre_count < 1:
            raise TrainError(f"--min-genre-count must be 1 or more (got {self.min_genre_count})")
        if not self.backbones:
            raise TrainError("--backbone: give at least one backbone")
        for name, estimator in (("genre", GenreClassifier), ("score", self.score_class)):
            unknown = set(getattr(self, name)) - set(estimator().get_params())
            if unknown:
                raise TrainError(f"unknown {name} model setting(s) {sorted(unknown)}: "
                                 f"{estimator.__name__} takes {sorted(estimator().get_params())}")
        epochs = self.genre.get("epochs", 1)
        if not isinstance(epochs, int) or epochs < 1:
            raise TrainError(f"--epochs must be 1 or more (got {epochs})")
        if self.text:
            from posterlens.text import require_rapidocr

            require_rapidocr()

    @property
    def score_class(self) -> type:
        return ScoreRegressor if self.score_mode == "regression" else ScoreClassifier

    def genre_estimator(self) -> GenreClassifier:
        return GenreClassifier(**{"seed": self.seed, **self.genre})

    def score_estimator(self) -> ScoreRegressor | ScoreClassifier:
        return self.score_class(**self.score)

    def feature_spec(self) -> features.FeatureSpec:
        if self.weights and len(self.backbones) > 1:
            raise TrainError("--weights applies to a single --backbone")
        return features.FeatureSpec(tuple(backbones.resolve(name, self.weights) for name in self.backbones))


@dataclass
class Dataset:
    """A catalogue's posters with their embeddings (posters that failed to load are dropped)."""

    table: pd.DataFrame
    X: np.ndarray
    keys: list[str]  # content hash of each poster
    texts: list[str | None] | None = None  # OCR text of each poster (None: not read), with --text only

    def texts_of(self, rows: np.ndarray) -> list[str | None] | None:
        """The texts of ``rows`` (None without --text)."""
        return None if self.texts is None else [self.texts[i] for i in rows]

    def subset(self, mask: np.ndarray) -> "Dataset":
        rows = np.flatnonzero(mask)
        return Dataset(self.table.iloc[rows].reset_index(drop=True), self.X[rows], [self.keys[i] for i in rows],
                       self.texts_of(rows))


@dataclass
class TrainResult:
    model_dir: Path
    model: PosterModel
    validation: dict | None
    seconds: dict[str, float]


def load_dataset(catalog_path: Path, images: Path | None, spec: features.FeatureSpec, cache: Path,
                 progress: bool = True, text: OcrSettings | None = None) -> Dataset:
    """Read a catalogue and embed its posters (from the cache where possible); with ``text``
    (OCR settings), also read the text printed on them (cached in the same folder)."""
    table = catalog.read_catalog(catalog_path, images)
    emb = features.embed(table["path"].tolist(), spec, cache, progress=progress)
    ok = emb.ok
    if not ok.any():
        raise TrainError(f"{catalog_path}: none of the {len(table)} posters could be read")
    data = Dataset(table, emb.features, emb.keys).subset(ok)
    if text is not None:
        from posterlens.text import read_texts

        data.texts = read_texts(data.table["path"].tolist(), cache, text, progress=progress).texts
    return data


def choose_genres(table: pd.DataFrame, min_count: int) -> list[str]:
    """Genres with at least ``min_count`` posters; the others are left out with a warning."""
    vocabulary = catalog.genre_vocabulary(table)
    if not vocabulary:
        raise TrainError("the catalogue has no genres (a folder of Title_8.8.jpg posters has scores only): "
                         "train on a MovieGenre.csv or multi-label CSV, which give each poster its genres")
    counts = catalog.genre_matrix(table, vocabulary).sum(axis=0)
    kept = [g for g, c in zip(vocabulary, counts) if c >= min_count]
    dropped = [f"{g} ({int(c)})" for g, c in zip(vocabulary, counts) if c < min_count]
    if dropped:
        log.warning("left out %d genre(s) with fewer than %d training posters: %s", len(dropped), min_count, ", ".join(dropped))
    if len(kept) < 2:
        raise TrainError(f"{len(kept)} genre(s) have {min_count} or more posters; the genre model needs 2 or more: "
                         "add posters or lower --min-genre-count")
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
    if len(Y) < 2 * folds:
        raise TrainError(f"{len(Y)} posters are too few for {folds} folds: add posters or lower --folds")
    return list(MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(Y)), Y))


def fit_models(data: Dataset, idx: np.ndarray, genres: list[str], spec: features.FeatureSpec,
               config: TrainConfig, valid_idx: np.ndarray | None = None) -> PosterModel:
    """Fit the genre and score estimators on the rows ``idx`` of ``data``.

    Posters without genres (a score-only catalogue row) train the score model only;
    posters without a score train the genre model only.
    """
    table = data.table.iloc[idx]
    labelled = np.array([len(g) > 0 for g in table["genres"]])
    X, Y = data.X[idx][labelled], catalog.genre_matrix(table[labelled], genres)
    if len(X) < 2 * config.genre_estimator().calibration_folds:
        raise TrainError(f"{len(X)} posters with genres are too few to train the genre model")
    valid = None
    if valid_idx is not None and len(valid_idx):
        valid = (data.X[valid_idx], catalog.genre_matrix(data.table.iloc[valid_idx], genres))
    genre_model = config.genre_estimator().fit(X, Y, valid=valid)
    text_model = None
    if config.text:
        from posterlens.text import TextModel

        if data.texts is None:
            raise TrainError("--text: this dataset has no poster texts (load_dataset(..., text=OcrSettings()))")
        text_model = TextModel.fit_beside(genre_model, data.texts_of(idx[labelled]), Y, genres)
    scores = table["score"].to_numpy(dtype=float)
    has_score = ~np.isnan(scores)
    score_model = None
    if has_score.sum() >= MIN_SCORES:
        score_model = config.score_estimator().fit(data.X[idx][has_score], scores[has_score])
        if text_model is not None:
            fit_text_score(text_model, config, data.X[idx][has_score], scores[has_score], data.texts_of(idx[has_score]))
    info = {
        "training": asdict(config),
        "n_train": int(len(idx)),
        "n_train_genres": int(labelled.sum()),
        "n_train_scores": int(has_score.sum()),
        "train_genre_counts": {g: int(c) for g, c in zip(genres, Y.sum(axis=0))},
        "train_score_mean": float(scores[has_score].mean()) if has_score.any() else None,
        "data_fingerprint": fingerprint([data.keys[i] for i in idx], catalog.genre_matrix(table, genres)),
    }
    mode = config.score_mode if score_model is not None else "none"
    return PosterModel(spec, genres, genre_model.head_, None if score_model is None else score_model.head_, mode, info,
                       curves_table(genre_model, score_model), text_model)


def fit_text_score(text_model, config: TrainConfig, X: np.ndarray, y: np.ndarray, texts: list[str | None]) -> None:
    """Stack a text score model with the image one (``TextModel.fit_score``), on out-of-fold
    predictions of the score estimator over ``TEXT_SCORE_FOLDS`` folds of the scored posters."""
    from sklearn.model_selection import KFold, cross_val_predict

    folds = list(KFold(TEXT_SCORE_FOLDS, shuffle=True, random_state=config.seed).split(X))
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
    """Headline metrics of ``model`` on rows ``idx`` (holdout and cross-validation)."""
    table = data.table.iloc[idx]
    labelled = np.array([len(g) > 0 for g in table["genres"]])
    X = data.X[idx]
    Y = catalog.genre_matrix(table[labelled], model.genres)
    P = model.genre_proba(X[labelled], data.texts_of(idx[labelled]))
    L = model.genre_labels(P)
    train_Y = catalog.genre_matrix(data.table.drop(index=data.table.index[idx]), model.genres)
    result = {"genre": {**metrics.genre_metrics(Y, P, L), "genres_per_poster": float(L.sum(axis=1).mean()),
                        "true_genres_per_poster": float(Y.sum(axis=1).mean()),
                        "baselines": metrics.genre_baselines(train_Y.mean(axis=0), Y)}}
    scores = table["score"].to_numpy(dtype=float)
    ok = ~np.isnan(scores)
    if model.score_model is not None and ok.sum() > 1:
        texts = data.texts_of(idx[ok])
        result["score"] = metrics.score_metrics(scores[ok], model.score(X[ok], texts), model.info["train_score_mean"])
    return result


def similar_index(model: PosterModel, data: Dataset, idx: np.ndarray, seed: int) -> SimilarIndex:
    """Nearest-neighbour index over the training posters, in the genre space."""
    rows = data.table.iloc[idx]
    movies = pd.DataFrame({"id": rows["id"].to_numpy(), "title": rows["title"].to_numpy(),
                           "genres": ["|".join(g) for g in rows["genres"]], "score": rows["score"].to_numpy(),
                           "key": [data.keys[i] for i in idx]})
    return SimilarIndex.build(model.genre_proba(data.X[idx], data.texts_of(idx)), movies, seed)


def curves_table(genre_model, score_model) -> pd.DataFrame:
    """fit_one_cycle curves of the estimators trained with fastai."""
    frames = []
    for name, estimator in (("genre", genre_model), ("score", score_model)):
        if estimator is not None and hasattr(estimator, "log_"):
            frames.append(pd.DataFrame(estimator.log_.rows).assign(model=name))
    columns = ["model", "epoch", "train_loss", "valid_loss"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def validate(data: Dataset, genres: list[str], spec: features.FeatureSpec, config: TrainConfig) -> tuple[dict | None, np.ndarray, np.ndarray]:
    """Cross-validation or holdout figures; returns them with the (train, test) rows of the final fit.

    With ``config.refit`` the final fit uses every poster; without it, the holdout's
    training part (so ``posterlens evaluate`` can score the held-out posters later).
    """
    Y = catalog.genre_matrix(data.table, genres)  # splits are stratified on it
    everything, none = np.arange(len(Y)), np.array([], dtype=int)
    if config.folds:
        runs = []
        for k, (train_idx, test_idx) in enumerate(kfold_splits(Y, config.folds, config.seed)):
            runs.append(evaluate_split(fit_models(data, train_idx, genres, spec, config), data, test_idx))
            log.info("fold %d/%d: macro-mAP %.3f, micro-F1 %.3f", k + 1, config.folds,
                     runs[-1]["genre"]["macro_map"], runs[-1]["genre"]["micro_f1"])
        return {"method": f"{config.folds}-fold cross-validation", **metrics.summarise_folds(runs)}, everything, none
    if not config.holdout:
        return None, everything, none
    train_idx, test_idx = holdout_split(Y, config.holdout, config.seed)
    if config.refit:
        model = fit_models(data, train_idx, genres, spec, config)
        figures = evaluate_split(model, data, test_idx)
        return {"method": f"{config.holdout:.0%} holdout (seed {config.seed})", "n_test": int(len(test_idx)), **figures}, everything, none
    return None, train_idx, test_idx


def train(catalog_path: Path, images: Path | None, out: Path, config: TrainConfig, cache: Path,
          progress: bool = True) -> TrainResult:
    """Embed, validate, fit and write the model directory (atomically: ``model.save``)."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    spec = config.feature_spec()
    ocr = None
    if config.text:
        from posterlens.text import OcrSettings

        ocr = OcrSettings()
    data = load_dataset(catalog_path, images, spec, cache, progress, ocr)
    seconds["embed"] = time.perf_counter() - start  # and read the posters' text, with --text
    genres = choose_genres(data.table, config.min_genre_count)
    validation, train_idx, test_idx = validate(data, genres, spec, config)
    model = fit_models(data, train_idx, genres, spec, config, valid_idx=test_idx)
    if validation is None and len(test_idx):
        validation = {"method": f"{config.holdout:.0%} holdout (seed {config.seed})", "n_test": int(len(test_idx)),
                      **evaluate_split(model, data, test_idx)}
    model.info["validation"] = validation
    model.info["evaluated_on"] = validation["method"] if validation else "nothing (no holdout, no folds)"
    model.info["holdout_ids"] = data.table["id"].iloc[test_idx].tolist()
    model.info["catalog"] = str(Path(catalog_path).resolve())  # where similar movies' posters are looked up
    model.info["images"] = str(Path(images).resolve()) if images else None
    seconds["fit"] = time.perf_counter() - start - seconds["embed"]
    extra = {
        CURVES_FILE: model.curves,
        TRAINING_SET_FILE: pd.DataFrame({"id": data.table["id"].iloc[train_idx],
                                         "key": [data.keys[i] for i in train_idx]}),
    }
    save(model, out, extra, similar_index(model, data, train_idx, config.seed))
    seconds["total"] = time.perf_counter() - start
    return TrainResult(out, model, validation, seconds)

