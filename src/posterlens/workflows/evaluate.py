"""Evaluation of a model directory on posters it never saw: metrics, tables, figures, report."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from posterlens import safeio
from posterlens.data import catalog
from posterlens.data.dataset import Dataset
from posterlens.errors import EvaluationError
from posterlens.features.embed import load_dataset
from posterlens.models import similar
from posterlens.models.directory import CURVES_FILE, TRAINING_SET_FILE, PosterModel, load, read_config
from posterlens.models.trust import DOMAIN_SHARE, INTERVAL
from posterlens.workflows import metrics, report

__all__ = ["Evaluation", "unseen", "training_priors", "compute", "interval_figures", "similar_quality", "evaluate", "build_page",
           "prevalence", "make_figures", "header", "PosterViews", "worst_score_misses", "worst_genre_misses",
           "similar_searches"]

log = logging.getLogger(__name__)


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
    labelled = data.labelled
    Y = catalog.genre_matrix(data.table, model.genres)
    P = model.genre_proba(data.X, data.texts)
    L = model.genre_labels(P)
    scores = data.table["score"].to_numpy(dtype=float)
    predicted = model.score(data.X, data.texts)
    has = ~np.isnan(scores)
    result = {"n_posters": int(len(Y)), "n_genres": len(model.genres), "kind": model.kind, "genre": None, "score": None}
    if model.genre_model is not None and labelled.any():
        genre = metrics.genre_metrics(Y[labelled], P[labelled], L[labelled])
        genre["genres_per_poster"] = float(L[labelled].sum(axis=1).mean())
        genre["true_genres_per_poster"] = float(Y[labelled].sum(axis=1).mean())
        genre["baselines"] = metrics.genre_baselines(training_priors(model), Y[labelled])
        genre["accepted"] = metrics.accepted_curve(Y[labelled], L[labelled], model.genre_confidence(P[labelled], L[labelled]))
        result["genre"] = genre
    if model.score_model is not None and has.sum() > 1:
        result["score"] = {"mode": model.score_mode, **metrics.score_metrics(
            scores[has], predicted[has], model.info["train_score_mean"], classes=model.score_mode == "classes")}
        result["score"] |= interval_figures(model, data.X[has], scores[has], predicted[has])
    if model.domain is not None:
        result["domain"] = {"flagged": float(np.mean(model.domain_score(data.X) < DOMAIN_SHARE)), "below": DOMAIN_SHARE}
    if result["genre"] is None and result["score"] is None:
        wanted = {"genres and score": "genres or scores", "genres only": "genres", "score only": "scores"}[model.kind]
        raise EvaluationError(f"none of the unseen posters has {wanted} to evaluate this {model.kind} model on")
    return result, {"Y": Y, "P": P, "L": L, "scores": scores, "predicted": predicted,
                    "space": model.space(P, data.X)}


def interval_figures(model: PosterModel, X: np.ndarray, y: np.ndarray, predicted: np.ndarray) -> dict:
    """``interval`` (coverage and mean width at ``INTERVAL``) and ``coverage`` (at each of
    ``COVERAGE_LEVELS``); nothing for a model without score intervals."""
    if model.intervals is None:
        return {}
    at = {f"{level:.2f}": metrics.interval_metrics(y, *model.score_interval(X, predicted, level), level)
          for level in sorted({*metrics.COVERAGE_LEVELS, INTERVAL})}
    return {"interval": at[f"{INTERVAL:.2f}"], "coverage": at}


def similar_quality(model_dir: Path, model: PosterModel, data: Dataset, P: np.ndarray, k: int = 10) -> dict | None:
    """Genre precision@k of the similar-movies index for these posters, and for random neighbours."""
    index = similar.SimilarIndex.load(model_dir, model.space_dim)
    if index is None or model.genre_model is None:  # precision@k counts shared genres
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
    ocr = model.text.settings if model.text else None  # a model trained with --text reads the posters' text
    data = load_dataset(catalog_path, images, model.features, cache, progress, ocr)
    fresh = unseen(data, model_dir)
    if not fresh.any():
        raise EvaluationError(f"{catalog_path}: all {len(fresh)} posters were used to train {model_dir}; "
                              "evaluate on other posters (a model trained with --folds saw every poster)")
    if not fresh.all():
        log.info("evaluating on the %d posters the model never saw (%d were in its training set)", fresh.sum(), (~fresh).sum())
    data = data.subset(fresh)
    result, arrays = compute(model, data)
    result["similar"] = similar_quality(model_dir, model, data, arrays["P"])
    safeio.make_dir(out)
    tables = {}
    if result["genre"] is not None:
        tables = {
            "per_genre": metrics.per_genre_table(arrays["Y"], arrays["P"], arrays["L"], model.genres, model.thresholds),
            "confusions": metrics.confusions(arrays["Y"], arrays["L"], model.genres),
            "reliability": metrics.reliability_table(arrays["Y"], arrays["P"]),
        }
    for name, table in tables.items():
        safeio.write_csv(table, out / f"{name}.csv")
    safeio.write_json(out / "metrics.json", result)
    if tables:
        tables["per_genre"] = tables["per_genre"].assign(prevalence=prevalence(data, arrays["Y"]))  # chance AP, for the page
    pick = np.random.default_rng(0).choice(len(data.table), size=min(grid, len(data.table)), replace=False)
    figures = make_figures(model, model_dir, data, arrays, tables, out, pick, result)
    page = build_page(model_dir, model, catalog_path, data, arrays, result, tables, figures, pick)
    return Evaluation(result, report.write_html(out, page))


def build_page(model_dir: Path, model: PosterModel, catalog_path: Path, data: Dataset, arrays: dict, result: dict,
               tables: dict, figures: dict[str, str], pick: np.ndarray, misses: int = 6, searches: int = 4) -> report.Page:
    """Everything ``report.html`` shows: facts, metric tables, figures and poster cards."""
    views = PosterViews(model, data, arrays)
    return report.Page(
        header=header(model_dir, model, catalog_path, result), metrics=result,
        tables=report.metric_tables(result, model.info.get("validation")),
        per_genre=tables.get("per_genre", pd.DataFrame()), confusions=tables.get("confusions", pd.DataFrame()),
        figures=figures,
        samples=[views.poster(i) for i in pick],
        score_misses=[views.poster(i, score_error=True) for i in worst_score_misses(arrays, misses)],
        genre_misses=[views.poster(i) for i in worst_genre_misses(data, arrays, misses)] if tables else [],
        searches=similar_searches(model_dir, model, data, arrays, pick[:searches]),
        files=[f"{name}.csv" for name in tables] + ["metrics.json"] + [f"{name}.png" for name in figures],
    )


def prevalence(data: Dataset, Y: np.ndarray) -> np.ndarray:
    """Share of the posters with genres that have each genre: the average precision of chance."""
    return Y[data.labelled].mean(axis=0)


def make_figures(model: PosterModel, model_dir: Path, data: Dataset, arrays: dict, tables: dict,
                 out: Path, pick: np.ndarray, result: dict) -> dict[str, str]:
    """Write the PNG figures into ``out``; returns name -> PNG data URI for the page."""
    figures = {}
    curves = model_dir / CURVES_FILE
    if curves.is_file():
        figures["training_curves"] = report.plot_curves(pd.read_csv(curves))
    if tables:  # a model with genres
        figures["reliability"] = report.plot_reliability(tables["reliability"])
        figures["per_genre"] = report.plot_per_genre(tables["per_genre"])
        labelled = data.labelled
        figures["pr_curves"] = report.plot_pr_curves(arrays["Y"][labelled], arrays["P"][labelled], tables["per_genre"])
    has = ~np.isnan(arrays["scores"])
    if model.score_model is not None and has.any():
        figures["scores"] = report.plot_scores(arrays["scores"][has], arrays["predicted"][has])
    if (result.get("score") or {}).get("coverage"):
        figures["intervals"] = report.plot_intervals(result["score"]["coverage"])
    if result.get("genre"):
        figures["accepted"] = report.plot_accepted(result["genre"]["accepted"], result["genre"]["micro_f1"])
    if tables:
        figures["genre_distribution"] = report.plot_genre_distribution(model.info["train_genre_counts"],
                                                                       model.info["n_train"])
    names = lambda row: "|".join(g for g, on in zip(model.genres, row) if on) or "-"  # noqa: E731
    sample = data.table.iloc[pick].assign(
        true=["|".join(g) for g in data.table["genres"].iloc[pick]],
        predicted=[names(row) for row in arrays["L"][pick]],
        predicted_score=arrays["predicted"][pick],
    )
    figures["sample_posters"] = report.plot_poster_grid(sample)
    return {name: report.save_figure(fig, out / f"{name}.png") for name, fig in figures.items()}


def header(model_dir: Path, model: PosterModel, catalog_path: Path, result: dict) -> report.Header:
    """The page's header facts, quoted from the model directory and the evaluation."""
    return report.Header(
        model_dir=str(model_dir), backbones=[b.name for b in model.features.backbones], catalogue=str(catalog_path),
        n_posters=result["n_posters"], n_genres=result["n_genres"], n_train=model.info["n_train"],
        validated_on=model.info.get("evaluated_on", "not recorded"),
        model_version=str(read_config(model_dir).get("posterlens_version", "unknown")),
        fingerprint=model.info.get("data_fingerprint", ""),
    )


def _number(value) -> float | None:
    """A score as a float, None where it is missing (NaN or empty)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(value) else value


@dataclass
class PosterViews:
    """Evaluated posters as the page's poster cards."""

    model: PosterModel
    data: Dataset
    arrays: dict

    def genres(self, i: int) -> list[tuple[str, str]]:
        """Predicted genres as hits or wrong, then the true genres missed ("other": outside the model's genres)."""
        true = self.data.table["genres"].iloc[i]
        predicted = [g for g, on in zip(self.model.genres, self.arrays["L"][i]) if on]
        missed = [(g, "missed" if g in self.model.genres else "other") for g in true if g not in predicted]
        return [(g, "hit" if g in true else "extra") for g in predicted] + missed

    def poster(self, i: int, score_error: bool = False, top: int = 5) -> report.Poster:
        row = self.data.table.iloc[i]
        P, true = self.arrays["P"][i], set(row["genres"])
        score, predicted = _number(self.arrays["scores"][i]), _number(self.arrays["predicted"][i])
        note = f"score error {predicted - score:+.1f}" if score_error and None not in (score, predicted) else ""
        probabilities = [(self.model.genres[j], float(P[j]), self.model.genres[j] in true) for j in np.argsort(-P)[:top]]
        return report.Poster(row["title"], report.thumbnail(row["path"]), self.genres(i), probabilities,
                             score, predicted, note)


def worst_score_misses(arrays: dict, n: int) -> np.ndarray:
    """The ``n`` posters whose predicted score is furthest from the true one."""
    error = np.abs(arrays["predicted"] - arrays["scores"])
    known = np.flatnonzero(~np.isnan(error))
    return known[np.argsort(-error[known], kind="stable")][:n]


def worst_genre_misses(data: Dataset, arrays: dict, n: int) -> np.ndarray:
    """The ``n`` posters with genres with the most wrong genre decisions (then the most confidently wrong)."""
    Y, P, L = arrays["Y"], arrays["P"], arrays["L"]
    wrong, distance = (Y != L).sum(axis=1), np.abs(Y - P).sum(axis=1)
    rows = np.flatnonzero(data.labelled)
    return rows[np.lexsort((-distance[rows], -wrong[rows]))][:n]


def similar_searches(model_dir: Path, model: PosterModel, data: Dataset, arrays: dict, queries: np.ndarray,
                     k: int = 5) -> list[report.Search]:
    """Example similar-movie searches: evaluated posters and their ``k`` nearest training posters.

    Training posters are looked up by id in the folder the evaluated posters came from
    (the catalogue's images folder); a card without a file shows no poster.
    """
    index = similar.SimilarIndex.load(model_dir, model.space_dim)
    if index is None or not len(queries):
        return []
    folder = Path(data.table["path"].iloc[queries[0]]).parent
    paths = dict(zip(index.movies["id"], catalog.attach_posters(index.movies.assign(url=None), folder)["path"]))
    found = index.query(arrays["space"][queries], k, exclude=[data.keys[i] for i in queries])
    searches = []
    for i, neighbours in zip(queries, found):
        row = data.table.iloc[i]
        query = report.Poster(row["title"], report.thumbnail(row["path"]), [(g, "other") for g in row["genres"]],
                              score=_number(arrays["scores"][i]), note="query")
        cards = [report.Poster(m.title, report.thumbnail(paths.get(m.id)),
                               [(g, "shared" if g in row["genres"] else "other") for g in m.genres.split("|") if g],
                               score=_number(m.score), note=f"similarity {m.similarity:.2f}")
                 for m in neighbours.itertuples()]
        searches.append(report.Search(query, cards))
    return searches
