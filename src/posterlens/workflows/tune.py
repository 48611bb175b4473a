"""Hyper-parameter search (``posterlens tune``): which settings predict best, and by how much?

A space names what to search, by section: ``genre`` (``GenreClassifier`` parameters),
``score`` (``ScoreRegressor``), ``features`` (``FeatureBlocks``: backbone mix, input width,
mirror averaging) and ``cnn`` (``pixels.PixelCNN``, the original study's from-scratch CNN). Built-in
spaces are in ``SPACES``; a YAML or JSON file of the same shape defines a custom one.

Every configuration is scored by K-fold cross-validation on the folds of ``splits.kfold_splits``
(iterative stratification) with scikit-learn's ``GridSearchCV``: the whole grid, or with a
budget the configurations ``ParameterSampler`` draws (as ``RandomizedSearchCV`` does). Today's
defaults are always a candidate. Genre models are ranked by macro-mAP (``RANK``), the score
model by Spearman. Output in ``out``: ``tune.csv``, ``tune.md``, figures and ``best.json``, which
``posterlens train --config`` reads (``TrainConfig.from_file``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.model_selection import GridSearchCV, ParameterGrid, ParameterSampler
from sklearn.pipeline import Pipeline

from posterlens.data import catalog
from posterlens.data.dataset import choose_genres, labelled
from posterlens.data.splits import kfold_splits, restrict
from posterlens.errors import SettingsError, SpaceError
from posterlens.features import backbones
from posterlens.features.embed import embed_files
from posterlens.models.estimators import GenreClassifier, ScoreRegressor
from posterlens.models.fitted import PARAM_RULES
from posterlens.models.pixels import SCHEDULES, PixelCNN, decode_posters
from posterlens.progress import progress as progress_bar
from posterlens.settings import read_file
from posterlens.workflows import metrics
from posterlens.workflows.config import TUNE_BUDGET, TUNE_QUICK_BUDGET, TrainConfig
from posterlens.workflows.tune_report import GENRE_METRICS, RANK, SCORE_METRICS, metric_names, shown, write_outputs

log = logging.getLogger(__name__)

__all__ = ["SPACES", "QUICK_SPACES", "SECTIONS", "FeatureBlocks", "check_space", "load_space", "tune"]

N_JOBS = {"genre": 2, "score": 1, "cnn": 1}  # processes; each genre fit trains with one torch thread
QUICK = {"genre": {"epochs": 2, "calibration_folds": 2}, "cnn": {"epochs": 2}}  # fixed settings under --quick
MAX_VALUES = 1000  # values one parameter of a space may list
MAX_GRID = 1_000_000  # a grid larger than this is sampled, never listed (and --budget is capped to it)
QUICK_POSTERS = 120
QUICK_MIN_GENRE_COUNT = 5
CNN_INPUT = PixelCNN.default_size
QUICK_CNN_INPUT = (64, 96)

SPACES: dict[str, dict[str, dict[str, list]]] = {
    "heads": {
        "genre": {"wd": [3.0, 10.0, 30.0, 100.0], "hidden": [0, 256], "dropout": [0.25, 0.5],
                  "pos_weight": [True, False], "max_labels": [3, 4, 5], "rank_power": [0.0, 0.5, 1.0],
                  "threshold_scale": [0.9, 1.0, 1.1, 1.25]},
        "score": {"alpha": [0.3, 1.0, 3.0, 10.0, 30.0], "components": [64, 128, 256],
                  "kernel_components": [250, 500, 1000], "gamma_scale": [0.5, 1.0, 2.0]},
    },
    "features": {
        "features": {"backbones": [["efficientnet_lite0"], ["efficientnet_lite2"], ["mobilenet_v2"],
                                   ["efficientnet_lite0", "efficientnet_lite2"],
                                   ["efficientnet_lite0", "efficientnet_lite2", "mobilenet_v2"]],
                     "width": [None, 224], "mirror": [False, True]},
    },
    "cnn": {
        "cnn": {"filters": [16, 32], "dropout": [0.25, 0.5], "lr": [1e-4, 1e-3], "batch_size": [32, 64],
                "schedule": list(SCHEDULES)},
    },
}
# --quick: spaces that embed little (the sample's lite0 mirror images only)
QUICK_SPACES = {"features": {"features": {"backbones": [["efficientnet_lite0"], ["efficientnet_lite0", "efficientnet_lite2"]],
                                          "mirror": [False, True]}}}
# lower bounds of integer settings (the others: 0)
MINIMUM = {"epochs": 1, "max_steps": 0, "calibration_folds": 2, "max_labels": 1, "batch_size": 1, "components": 1,
           "kernel_components": 1, "filters": 1, "width": 32}


# --- estimators the search needs beyond heads ------------------------------------------------

def sized(name: str, width: int | None) -> backbones.Backbone:
    """A registered backbone, at input ``width`` (portrait height) when given."""
    backbone = backbones.REGISTRY[name]
    return replace(backbone, width=width, height=backbones.portrait_height(width)) if width else backbone


def block_key(name: str, width: int | None, mirror: bool) -> str:
    """Name of one cached embedding block: the backbone's cache key, ``:mirror`` for mirrored posters."""
    return sized(name, width).key + (":mirror" if mirror else "")


class FeatureBlocks(TransformerMixin, BaseEstimator):
    """Selects one feature configuration's columns from a matrix of every cached block.

    ``layout`` maps ``block_key`` -> (start, stop) columns. The output is the ``backbones``'
    embeddings at ``width`` concatenated; with ``mirror`` each is averaged with its mirror image's.
    """

    def __init__(self, layout: dict | None = None, backbones: list[str] | tuple[str, ...] = backbones.DEFAULT_FEATURES,
                 width: int | None = None, mirror: bool = False):
        self.layout, self.backbones, self.width, self.mirror = layout, backbones, width, mirror

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> "FeatureBlocks":
        self.n_features_in_ = X.shape[1]
        return self

    def _block(self, X: np.ndarray, name: str, mirror: bool) -> np.ndarray:
        start, stop = self.layout[block_key(name, self.width, mirror)]
        return X[:, start:stop]

    def transform(self, X: np.ndarray) -> np.ndarray:
        parts = [self._block(X, name, False) for name in self.backbones]
        if self.mirror:
            parts = [(part + self._block(X, name, True)) / 2 for part, name in zip(parts, self.backbones)]
        return np.concatenate(parts, axis=1)


SECTIONS: dict[str, type] = {"features": FeatureBlocks, "genre": GenreClassifier, "score": ScoreRegressor,
                             "cnn": PixelCNN}
FIXED = {"layout", "seed", "verbose"}  # parameters a space does not search


def searchable(section: str) -> dict:
    """The parameters a space may set in ``section``, with their defaults."""
    return {k: v for k, v in SECTIONS[section]().get_params().items() if k not in FIXED}


# --- spaces ------------------------------------------------------------------------------------

def _value_error(section: str, name: str, value, default) -> str | None:
    """Why ``value`` is not a valid ``section.name``, or None."""
    if name == "backbones":
        names = value.split("+") if isinstance(value, str) else value
        if not isinstance(names, list) or not names or any(n not in backbones.REGISTRY for n in names):
            return f"{value!r} is not a list of backbones from {', '.join(backbones.REGISTRY)}"
        return None
    if name == "schedule":
        return None if value in SCHEDULES else f"{value!r} is not one of {', '.join(SCHEDULES)}"
    if default is None or isinstance(default, int) and not isinstance(default, bool):
        if value is None and default is None:
            return None
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= MINIMUM.get(name, 0)
        return None if ok else f"{value!r} is not an integer >= {MINIMUM.get(name, 0)}"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"{value!r} is not true or false"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    return None if ok else f"{value!r} is not a number >= 0"


def check_space(space, where: str) -> dict[str, dict[str, list]]:
    """``space`` if valid, backbone mixes as lists; else a ``SpaceError`` naming ``where`` and the key."""
    if not isinstance(space, dict) or not space:
        raise SpaceError(f"{where}: expected sections {', '.join(SECTIONS)}, each mapping parameters to lists of values")
    checked = {}
    for section, grid in space.items():
        if section not in SECTIONS:
            raise SpaceError(f"{where}: unknown section {section!r}: use {', '.join(SECTIONS)}")
        if not isinstance(grid, dict) or not grid:
            raise SpaceError(f"{where}: {section}: expected parameter names mapped to lists of values")
        defaults = searchable(section)
        for name, values in grid.items():
            key = f"{section}.{name}"
            if name not in defaults:
                raise SpaceError(f"{where}: {key}: unknown parameter; {SECTIONS[section].__name__} takes "
                                 f"{', '.join(sorted(defaults))}")
            if not isinstance(values, list) or not values:
                raise SpaceError(f"{where}: {key}: expected a non-empty list of values (got {values!r})")
            if len(values) > MAX_VALUES:
                raise SpaceError(f"{where}: {key}: {len(values):,} values; at most {MAX_VALUES:,} a parameter")
            for value in values:
                error = _value_error(section, name, value, defaults[name])
                rule = PARAM_RULES.get(SECTIONS[section].__name__, {}).get(name)
                error = error or (rule.problem(value) if rule is not None else None)  # the estimator's own range
                if error:
                    raise SpaceError(f"{where}: {key}: {error}")
        checked[section] = {name: [v.split("+") if name == "backbones" and isinstance(v, str) else v for v in values]
                            for name, values in grid.items()}
    return checked


def load_space(space: str | Path, quick: bool = False) -> dict[str, dict[str, list]]:
    """A built-in space by name (``SPACES``; ``QUICK_SPACES`` under ``quick``), or a YAML/JSON file's, validated."""
    if str(space) in SPACES:
        return {**SPACES[str(space)], **(QUICK_SPACES.get(str(space), {}) if quick else {})}
    path = Path(space)
    if not path.is_file():
        raise SpaceError(f"--space {space}: not a built-in space ({', '.join(SPACES)}) nor a file")
    try:
        loaded = read_file(path)
    except SettingsError as err:
        raise SpaceError(str(err)) from None
    return check_space(loaded, str(path))


def candidates(grid: dict[str, list], budget: int, seed: int) -> list[dict]:
    """Today's defaults ({}), then ``budget`` configurations drawn at random from ``grid`` (the whole
    grid where it is no larger). The grid is counted, never listed, before it is drawn from."""
    size = math.prod(len(values) for values in grid.values())
    if budget >= size and size <= MAX_GRID:
        drawn = list(ParameterGrid(grid))
    else:
        drawn = list(ParameterSampler(grid, min(budget, size, MAX_GRID), random_state=seed))
    return [{}] + [c for c in drawn if c]


def new_settings(estimator: Pipeline, configs: list[dict]) -> list[dict]:
    """``configs`` without those that repeat an earlier one's settings (a draw equal to the defaults)."""
    seen, kept = [], []
    for config in configs:
        effective = settings(estimator, config)
        if effective not in seen:
            seen.append(effective)
            kept.append(config)
    return kept


def prefixed(section: str, grid: dict[str, list]) -> dict[str, list]:
    """``grid`` with Pipeline step prefixes (``features__width``, ``model__wd``)."""
    step = "features" if section == "features" else "model"
    return {f"{step}__{name}": values for name, values in grid.items()}


# --- data ----------------------------------------------------------------------------------------

@dataclass
class Search:
    """One model's search: estimator, candidate settings and the data and folds it is scored on."""

    model: str  # "genre", "score" or "cnn"
    estimator: BaseEstimator
    candidates: list[dict]
    X: np.ndarray
    y: np.ndarray
    splits: list[tuple[np.ndarray, np.ndarray]]
    scoring: Callable
    n_jobs: int = 1


def read_posters(catalog_path: Path, images: Path | None, quick: bool, seed: int) -> pd.DataFrame:
    """The catalogue; under ``quick`` a seeded sample of ``QUICK_POSTERS``."""
    table = catalog.read_catalog(catalog_path, images)
    if quick and len(table) > QUICK_POSTERS:
        table = table.sample(n=QUICK_POSTERS, random_state=seed).reset_index(drop=True)
    return table


def embedding_blocks(paths: list[str], needed: list[tuple[str, int | None, bool]], cache: Path,
                     progress: bool) -> tuple[np.ndarray, dict, np.ndarray]:
    """Every needed (backbone, width, mirror) block from the cache (embedding what is missing),
    side by side; returns (X, layout, rows embedded in every block)."""
    parts, layout, start = [], {}, 0
    for name, width, mirror in needed:
        emb = embed_files(paths, sized(name, width), cache, mirror=mirror, progress=progress)
        parts.append(emb.features)
        layout[block_key(name, width, mirror)] = (start, start + emb.features.shape[1])
        start += emb.features.shape[1]
    X = np.concatenate(parts, axis=1)
    return X, layout, ~np.isnan(X).any(axis=1)


def needed_blocks(configs: list[dict]) -> list[tuple[str, int | None, bool]]:
    """The (backbone, width, mirror) blocks that the candidates' feature settings use."""
    default = FeatureBlocks()
    needed = []
    for config in configs:
        names = config.get("features__backbones", default.backbones)
        width, mirror = config.get("features__width", default.width), config.get("features__mirror", default.mirror)
        for block in product(names, [width], [False, True] if mirror else [False]):
            if block not in needed:
                needed.append(block)
    return needed


def genre_targets(table: pd.DataFrame, folds: int, quick: bool, seed: int) -> tuple[np.ndarray, list]:
    """The genre matrix (genres with enough posters) and its K folds."""
    genres = choose_genres(table, QUICK_MIN_GENRE_COUNT if quick else TrainConfig.min_genre_count)
    Y = catalog.genre_matrix(table, genres)
    return Y, kfold_splits(Y, folds, seed)


def quick_params(model: str, quick: bool) -> dict:
    return {f"model__{k}": v for k, v in QUICK.get(model, {}).items()} if quick else {}


def embedding_searches(space: dict, table: pd.DataFrame, cache: Path, folds: int, budget: int | None, quick: bool,
                       seed: int, progress: bool) -> list[Search]:
    """Genre and score searches on cached embeddings (``features``, ``genre``, ``score`` sections)."""
    feature_grid = prefixed("features", space.get("features", {}))
    plans = {model: candidates({**feature_grid, **prefixed(model, space.get(model, {}))}, budget, seed)
             for model in ("genre", "score") if model in space or feature_grid}
    X, layout, ok = embedding_blocks(table["path"].tolist(), needed_blocks([c for p in plans.values() for c in p]),
                                     cache, progress)
    table, X = table[ok].reset_index(drop=True), X[ok]
    if labelled(table).any():
        Y, splits = genre_targets(table, folds, quick, seed)
    else:  # a folder of Title_8.8.jpg posters: scores only
        if plans.pop("genre", None) is not None:
            log.warning("no poster has genres: tuning the score model only")
        Y = np.zeros((len(table), 0), dtype=np.float32)
        splits = kfold_splits(Y, folds, seed)
    searches = []
    for model, configs in plans.items():
        estimator = Pipeline([("features", FeatureBlocks(layout)), ("model", SECTIONS[model]())])
        estimator.set_params(**quick_params(model, quick))
        if model == "genre":
            rows = table["genres"].map(len).to_numpy() > 0
            target, scoring = Y[rows], genre_scores
        else:
            rows = ~np.isnan(table["score"].to_numpy(dtype=float))
            target, scoring = table["score"].to_numpy(dtype=float)[rows], score_scores
        searches.append(Search(model, estimator, new_settings(estimator, configs), X[rows], target, restrict(splits, rows), scoring,
                               1 if quick else N_JOBS[model]))
    return searches


def cnn_search(space: dict, table: pd.DataFrame, folds: int, budget: int | None, quick: bool, seed: int) -> Search:
    """The from-scratch CNN on decoded posters (``QUICK_CNN_INPUT`` under ``quick``)."""
    X, ok = decode_posters(table["path"].tolist(), QUICK_CNN_INPUT if quick else CNN_INPUT)
    table, X = table[ok].reset_index(drop=True), X[ok]
    Y, splits = genre_targets(table, folds, quick, seed)
    estimator = Pipeline([("model", PixelCNN(seed=seed))]).set_params(**quick_params("cnn", quick))
    configs = new_settings(estimator, candidates(prefixed("cnn", space["cnn"]), budget, seed))
    return Search("cnn", estimator, configs, X, Y, splits, genre_scores,
                  1 if quick else N_JOBS["cnn"])


# --- scoring -------------------------------------------------------------------------------------

def stored_numbers(estimator: Pipeline) -> int:
    """How many numbers the fitted model stores (its ``to_arrays``)."""
    return int(sum(a.size for a in estimator[-1].to_arrays().values()))


def genre_scores(estimator: Pipeline, X: np.ndarray, Y: np.ndarray) -> dict[str, float]:
    """Multi-label scorer for ``GridSearchCV``: ranking metrics from probabilities, set metrics from labels."""
    found = metrics.genre_metrics(Y, estimator.predict_proba(X), estimator.predict(X))
    return {**{m: found[m] for m in GENRE_METRICS}, "parameters": stored_numbers(estimator)}


def score_scores(estimator: Pipeline, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Score-model scorer for ``GridSearchCV``: Spearman and MAE."""
    found = metrics.score_metrics(y, estimator.predict(X), float(np.mean(y)))
    return {**{m: found[m] for m in SCORE_METRICS}, "parameters": stored_numbers(estimator)}


# --- the search ----------------------------------------------------------------------------------

def short(params: dict) -> dict:
    """Parameters without their Pipeline step prefix."""
    return {k.split("__", 1)[1]: v for k, v in params.items()}


def settings(estimator: Pipeline, params: dict) -> dict:
    """A configuration's settings that differ from their estimator's defaults, fixed ones (``QUICK``) included."""
    configured = clone(estimator).set_params(**params).get_params()
    result = {}
    for step, part in estimator.steps:
        for name, default in type(part)().get_params().items():
            value = plain(configured[f"{step}__{name}"])
            if name != "layout" and value != plain(default):
                result[name] = value
    return result


def plain(value):
    """Tuples as lists (as JSON has them)."""
    return list(value) if isinstance(value, tuple) else value


def results_frame(search: Search, cv: dict, offset: int) -> pd.DataFrame:
    """One row a configuration: its settings, metric mean, std and folds, fit time, stored numbers."""
    names = sorted({k for c in search.candidates for k in c})
    rows = []
    for i, params in enumerate(cv["params"]):
        configured = clone(search.estimator).set_params(**params).get_params()
        row = {"model": search.model, "config": offset + i, "default": not params,
               "settings": ", ".join(f"{k}={shown(v)}" for k, v in short(params).items()) or "defaults",
               **short({k: shown(configured[k]) for k in names})}
        for m in metric_names(search.model):
            row[f"{m}_mean"], row[f"{m}_std"] = cv[f"mean_test_{m}"][i], cv[f"std_test_{m}"][i]
            row.update({f"{m}_fold{k}": cv[f"split{k}_test_{m}"][i] for k in range(len(search.splits))})
        row["fit_s"], row["parameters"] = cv["mean_fit_time"][i], int(cv["mean_test_parameters"][i])
        row["params"] = json.dumps(settings(search.estimator, params))
        rows.append(row)
    return pd.DataFrame(rows)


def run_search(search: Search, bar, deadline: float | None = None) -> pd.DataFrame:
    """``GridSearchCV`` over the candidates, a few at a time so that the progress bar moves; today's
    defaults first. No new chunk starts once it would end past ``deadline`` (``time.monotonic``)."""
    frames, started = [], time.monotonic()
    for start in range(0, len(search.candidates), search.n_jobs):
        chunk = search.candidates[start:start + search.n_jobs]
        per_chunk = (time.monotonic() - started) / max(len(frames), 1)
        if frames and deadline is not None and time.monotonic() + per_chunk > deadline:
            log.warning("%s: --time-limit reached after %d of %d configurations", search.model, start,
                        len(search.candidates))
            break
        grid = GridSearchCV(search.estimator, [{k: [v] for k, v in c.items()} for c in chunk], scoring=search.scoring,
                            cv=search.splits, refit=False, n_jobs=search.n_jobs, error_score="raise")
        grid.fit(search.X, search.y)
        frames.append(results_frame(search, grid.cv_results_, start))
        bar.update(len(chunk))
        if len(frames) == 1 and len(search.candidates) > len(chunk):
            left = (time.monotonic() - started) * (len(search.candidates) - len(chunk)) / len(chunk)
            log.info("%s: %d configurations x %d folds; about %.1f min more", search.model, len(search.candidates),
                     len(search.splits), left / 60)
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(1, "rank", frame[f"{RANK[search.model]}_mean"].rank(ascending=False, method="first").astype(int))
    return frame.sort_values("rank").reset_index(drop=True)


def describe(searches: list[Search], catalog_path: Path, space: str, folds: int, budget: int | None, quick: bool,
             seconds: float) -> list[str]:
    """The notes above the tables: data, folds, candidates, time, command."""
    args = f" --space {space} --folds {folds}" + (f" --budget {budget}" if budget else "") + (" --quick" if quick else "")
    lines = [f"- Data: `{catalog_path}`" + (f" (quick: a seeded sample of {QUICK_POSTERS} posters, settings "
                                              f"{QUICK} fixed)" if quick else "") + "."]
    for s in searches:
        lines.append(f"- {s.model}: {len(s.y)} posters, {len(s.candidates)} configurations (today's defaults and "
                     + f"{len(s.candidates) - 1} drawn at random by `ParameterSampler`, `--budget {budget}`"
                     + f") x {folds} folds (`splits.kfold_splits`, iterative stratification), `GridSearchCV`, "
                     f"{s.n_jobs} process(es); ranked by {RANK[s.model]}.")
    lines.append(f"- Whole search: {seconds / 60:.1f} min. Command: `posterlens tune --catalog {catalog_path} --out DIR{args}`")
    return lines


def tune(catalog: Path, images: Path | None, out: Path, cache: Path, space: str = "heads", folds: int = 5,
         budget: int | None = None, quick: bool = False, progress: bool = True, seed: int = 42,
         time_limit: float | None = None) -> pd.DataFrame:
    """Search the ``space`` by K-fold cross-validation; write tune.csv, tune.md, figures and best.json in ``out``.

    ``budget``: configurations drawn at random per model (default ``TUNE_BUDGET``, ``TUNE_QUICK_BUDGET`` under
    ``quick``); today's defaults are always scored too. Random draws, not successive halving: every
    configuration is scored on the same K folds, so the report's paired intervals against the
    defaults hold. ``time_limit`` (minutes): no configuration starts past it.
    """
    start = time.perf_counter()
    budget = budget if budget is not None else TUNE_QUICK_BUDGET if quick else TUNE_BUDGET
    deadline = None if time_limit is None else time.monotonic() + 60 * time_limit
    grids = load_space(space, quick)
    catalog_path = Path(catalog)
    table = read_posters(catalog_path, images, quick, seed)
    searches = []
    if grids.keys() & {"features", "genre", "score"}:
        searches += embedding_searches(grids, table, Path(cache), folds, budget, quick, seed, progress)
    if "cnn" in grids:
        searches.append(cnn_search(grids, table, folds, budget, quick, seed))
    with progress_bar(sum(len(s.candidates) for s in searches), "tune", "config", progress) as bar:
        frame = pd.concat([run_search(s, bar, deadline) for s in searches], ignore_index=True)
    notes = describe(searches, catalog_path, str(space), folds, budget, quick, time.perf_counter() - start)
    scored = frame.groupby("model", sort=False).size().to_dict()
    if any(scored[s.model] < len(s.candidates) for s in searches):
        notes.append(f"- `--time-limit {time_limit:g}` stopped the search early: " + ", ".join(
            f"{s.model} {scored[s.model]} of {len(s.candidates)}" for s in searches) + " configurations scored.")
    write_outputs(frame, notes, Path(out))
    return frame
