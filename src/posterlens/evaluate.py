"""Evaluation of a model directory on posters it never saw: metrics, tables, figures, report."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from posterlens import catalog, metrics, report, safeio, similar
from posterlens.model import PosterModel, load
from posterlens.train import CURVES_FILE, TRAINING_SET_FILE, Dataset, load_dataset

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """Nothing to evaluate on."""


@dataclass
class Evaluation:
    metrics: dict
    report: Path


def unseen(data: Dataset, model_dir: Path) -> np.ndarray:
    """Mask of the posters whose content was not in the model's training set."""
    seen = set(pd.read_csv(model_dir / TRAINING_SET_FILE)["key"])
    return np.array([key not in seen for key in data.keys])


def training_priors(model: PosterModel) -> np.ndarray:
    counts = model.info["train_genre_counts"]
    return np.array([counts[g] for g in model.genres], dtype=np.float64) / model.info["n_train_genres"]


def compute(model: PosterModel, data: Dataset) -> tuple[dict, dict]:
    """Metrics of ``model`` on the posters of ``data`` (genre metrics on those with genres); also the raw arrays."""
    labelled = np.array([len(g) > 0 for g in data.table["genres"]])
    if not labelled.any():
        raise EvaluationError("none of the unseen posters has genres to evaluate the genre model on")
    Y = catalog.genre_matrix(data.table, model.genres)
    P = model.genre_proba(data.X)
    L = model.genre_labels(P)
    genre = metrics.genre_metrics(Y[labelled], P[labelled], L[labelled])
    genre["genres_per_poster"] = float(L[labelled].sum(axis=1).mean())
    genre["true_genres_per_poster"] = float(Y[labelled].sum(axis=1).mean())
    genre["baselines"] = metrics.genre_baselines(training_priors(model), Y[labelled])
    result = {"n_posters": int(len(Y)), "n_genres": len(model.genres), "genre": genre, "score": None}
    scores = data.table["score"].to_numpy(dtype=float)
    predicted = model.score(data.X)
    has = ~np.isnan(scores)
    if model.score_model is not None and has.sum() > 1:
        result["score"] = {"mode": model.score_mode,
                           **metrics.score_metrics(scores[has], predicted[has], model.info["train_score_mean"])}
    return result, {"Y": Y, "P": P, "L": L, "scores": scores, "predicted": predicted}


def similar_quality(model_dir: Path, model: PosterModel, data: Dataset, P: np.ndarray, k: int = 10) -> dict | None:
    """Genre precision@k of the similar-movies index for these posters, and for random neighbours."""
    index = similar.SimilarIndex.load(model_dir, len(model.genres))
    if index is None:
        return None
    found = index.query(P, k, exclude=data.keys)
    queries = data.table["genres"].tolist()
    return {f"genre_precision_at_{k}": similar.genre_precision_at_k(found, queries),
            "baseline": similar.random_precision(index.movies["genres"].tolist(), queries), "k": k}


def evaluate(model_dir: Path, catalog_path: Path, images: Path | None, out: Path,
             cache: Path, progress: bool = True, grid: int = 12) -> Evaluation:
    """Write ``metrics.json``, ``per_genre.csv``, ``confusions.csv``, figures and ``report.html``."""
    model_dir = Path(model_dir)
    model = load(model_dir)
    data = load_dataset(catalog_path, images, model.features, cache, progress)
    fresh = unseen(data, model_dir)
    if not fresh.any():
        raise EvaluationError(f"{catalog_path}: all {len(fresh)} posters were used to train {model_dir}; "
                              "evaluate on other posters (a model trained with --folds saw every poster)")
    if not fresh.all():
        log.info("evaluating on the %d posters the model never saw (%d were in its training set)", fresh.sum(), (~fresh).sum())
    data = Dataset(data.table[fresh].reset_index(drop=True), data.X[fresh], [k for k, f in zip(data.keys, fresh) if f])
    result, arrays = compute(model, data)
    result["similar"] = similar_quality(model_dir, model, data, arrays["P"])
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "per_genre": metrics.per_genre_table(arrays["Y"], arrays["P"], arrays["L"], model.genres, model.thresholds),
        "confusions": metrics.confusions(arrays["Y"], arrays["L"], model.genres),
        "reliability": metrics.reliability_table(arrays["Y"], arrays["P"]),
    }
    for name, table in tables.items():
        safeio.write_csv(table, out / f"{name}.csv")
    safeio.write_json(out / "metrics.json", result)
    figures = make_figures(model, model_dir, data, arrays, tables, out, grid)
    page = report.write_html(out, result, tables["per_genre"], tables["confusions"], figures)
    return Evaluation(result, page)


def make_figures(model: PosterModel, model_dir: Path, data: Dataset, arrays: dict, tables: dict,
                 out: Path, grid: int) -> list[Path]:
    figures = []
    curves = model_dir / CURVES_FILE
    if curves.is_file():
        figures.append(report.plot_curves(pd.read_csv(curves), out / "training_curves.png"))
    figures.append(report.plot_reliability(tables["reliability"], out / "reliability.png"))
    figures.append(report.plot_per_genre(tables["per_genre"], out / "per_genre.png"))
    has = ~np.isnan(arrays["scores"])
    if model.score_model is not None and has.any():
        figures.append(report.plot_scores(arrays["scores"][has], arrays["predicted"][has], out / "scores.png"))
    figures.append(report.plot_genre_distribution(model.info["train_genre_counts"], model.info["n_train"],
                                                  out / "genre_distribution.png"))
    pick = np.random.default_rng(0).choice(len(data.table), size=min(grid, len(data.table)), replace=False)
    names = lambda row: "|".join(g for g, on in zip(model.genres, row) if on) or "-"  # noqa: E731
    sample = data.table.iloc[pick].assign(
        true=["|".join(g) for g in data.table["genres"].iloc[pick]],
        predicted=[names(row) for row in arrays["L"][pick]],
        predicted_score=arrays["predicted"][pick],
    )
    figures.append(report.plot_poster_grid(sample, out / "sample_posters.png"))
    return figures
