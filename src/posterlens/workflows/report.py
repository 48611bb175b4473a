"""Figures and the one self-contained HTML page of an evaluation.

Every figure is written as a PNG next to the page (other tools read them) and embedded in
``report.html`` as a base64 data URI; posters are embedded as small JPEG thumbnails. The page
references no other file and loads no CSS, script or font: it can be mailed or archived alone.
The page is the Jinja2 template ``templates/report.html``.
"""

from __future__ import annotations

import base64
import io
import math
import textwrap
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from posterlens import __version__, safeio
from posterlens.data import images

__all__ = ["Header", "Poster", "Search", "MetricRow", "MetricTable", "Page", "readable", "best_of", "spread",
           "metric_table", "metric_tables", "data_uri", "thumbnail", "save_figure", "plot_curves", "plot_reliability",
           "plot_per_genre", "plot_pr_curves", "plot_scores", "plot_intervals", "plot_accepted", "plot_genre_distribution", "wrap", "poster_caption",
           "plot_poster_grid", "render", "write_html"]

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 90
THUMBNAIL = (120, 180)  # poster thumbnails in pixels (width, height); the page shows them at 2/3 size
CAPTION_WIDTH = 30  # characters per line of a poster caption in the sample grid
HIGHER, LOWER, NEUTRAL = "higher", "lower", ""

# metric key -> (readable name, which way is better)
METRICS: dict[str, tuple[str, str]] = {
    "micro_f1": ("Micro F1", HIGHER),
    "macro_f1": ("Macro F1", HIGHER),
    "samples_f1": ("Per-poster F1", HIGHER),
    "macro_map": ("Mean average precision (macro)", HIGHER),
    "micro_map": ("Average precision (micro)", HIGHER),
    "macro_roc_auc": ("ROC-AUC (macro)", HIGHER),
    "binary_accuracy": ("Binary accuracy", HIGHER),
    "hamming_loss": ("Hamming loss", LOWER),
    "jaccard": ("Jaccard index (per poster)", HIGHER),
    "subset_accuracy": ("Exact genre-set accuracy", HIGHER),
    "brier": ("Brier score", LOWER),
    "ece": ("Expected calibration error", LOWER),
    "genres_per_poster": ("Genres predicted per poster", NEUTRAL),
    "true_genres_per_poster": ("True genres per poster", NEUTRAL),
    "mae": ("Mean absolute error", LOWER),
    "rmse": ("Root mean squared error", LOWER),
    "spearman": ("Spearman rank correlation", HIGHER),
}


# --- what the page shows -------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class Header:
    """What was evaluated, with which model, and when."""

    model_dir: str
    backbones: list[str]
    catalogue: str
    n_posters: int
    n_genres: int
    n_train: int
    validated_on: str
    model_version: str  # posterlens version that trained the model
    fingerprint: str = ""
    version: str = __version__  # posterlens version that wrote the report
    date: str = field(default_factory=_now)


@dataclass
class Poster:
    """One poster card: its thumbnail, genres marked against the truth, probabilities, scores."""

    title: str
    thumbnail: str | None  # data URI, None when the file is missing or unreadable
    genres: list[tuple[str, str]]  # (genre, "hit" | "extra" | "missed" | "shared" | "other")
    probabilities: list[tuple[str, float, bool]] = field(default_factory=list)  # (genre, p, true?)
    score: float | None = None
    predicted_score: float | None = None
    note: str = ""


@dataclass
class Search:
    """A similar-movies query and the training posters it found."""

    query: Poster
    neighbours: list[Poster]


@dataclass
class MetricRow:
    name: str
    better: str  # HIGHER, LOWER or NEUTRAL
    values: list[float | None]
    best: list[bool]
    validation: str = ""


@dataclass
class MetricTable:
    """Metrics of the model beside its baselines, and the validation figure from training."""

    title: str
    columns: list[str]
    rows: list[MetricRow]
    validation: str = ""  # heading of the validation column; empty: no such column


@dataclass
class Page:
    header: Header
    metrics: dict  # metrics.json
    tables: list[MetricTable]
    per_genre: pd.DataFrame  # per_genre.csv with prevalence
    confusions: pd.DataFrame
    figures: dict[str, str]  # name -> PNG data URI
    samples: list[Poster]
    score_misses: list[Poster]
    genre_misses: list[Poster]
    searches: list[Search]
    files: list[str]  # written next to the page (named, never linked)


# --- metric tables -------------------------------------------------------------------------

def readable(key: str) -> tuple[str, str]:
    """Readable name and better direction of a metric key (unknown keys: words, no direction)."""
    return METRICS.get(key, (key.replace("_", " ").capitalize(), NEUTRAL))


def best_of(values: list[float | None], better: str) -> list[bool]:
    """Which of ``values`` is best (ties all marked); nothing is best for a neutral metric."""
    known = [v for v in values if v is not None and not math.isnan(v)]
    if better == NEUTRAL or len(known) < 2:
        return [False] * len(values)
    target = max(known) if better == HIGHER else min(known)
    return [v is not None and not math.isnan(v) and math.isclose(v, target, abs_tol=1e-9) for v in values]


def spread(value) -> str:
    """A validation figure: ``0.412`` or, from cross-validation, ``0.412 ± 0.031``."""
    if isinstance(value, dict) and {"mean", "std"} <= set(value):
        return f"{value['mean']:.3f} ± {value['std']:.3f}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.3f}"
    return ""


def metric_table(title: str, columns: list[str], rows: dict[str, list[float | None]],
                 validation: dict | None, method: str) -> MetricTable:
    """Rows keyed by metric, one value per column; ``validation`` holds the training-time figures."""
    validation = validation or {}
    built = []
    for key, values in rows.items():
        name, better = readable(key)
        built.append(MetricRow(name, better, values, best_of(values, better), spread(validation.get(key))))
    has_validation = any(row.validation for row in built)
    return MetricTable(title, columns, built, f"At training: {method}" if has_validation else "")


def metric_tables(metrics: dict, validation: dict | None) -> list[MetricTable]:
    """Genre, score and similar-movies tables: the model beside the baselines computed the same way."""
    validation = validation or {}
    method = validation.get("method", "")
    tables = []
    genre = metrics.get("genre")
    if genre:
        baselines = genre["baselines"]
        rows = {k: [v, baselines["top2_constant"].get(k), baselines["priors"].get(k)]
                for k, v in genre.items() if not isinstance(v, dict)}
        tables.append(metric_table("Genres", ["Model", "Top-2 constant", "Training priors"], rows,
                                   validation.get("genre"), method))
    score = metrics.get("score")
    if score:
        rows = {k: [score[k], score["baseline_mae"] if k == "mae" else None]
                for k in ("mae", "rmse", "spearman", "accuracy") if k in score}
        tables.append(metric_table(f"Score ({score.get('mode', 'regression')})", ["Model", "Training mean"], rows,
                                   validation.get("score"), method))
    trust = trust_table(metrics)
    if trust is not None:
        tables.append(trust)
    similar = metrics.get("similar")
    if similar:
        key = f"genre_precision_at_{similar['k']}"
        row = MetricRow(f"Neighbours sharing a genre (precision@{similar['k']})", HIGHER,
                        [similar[key], similar["baseline"]], best_of([similar[key], similar["baseline"]], HIGHER))
        tables.append(MetricTable("Similar movies", ["Model", "Random neighbours"], [row]))
    return tables


def trust_table(metrics: dict) -> MetricTable | None:
    """How far to trust an answer: the score interval's coverage and width, the share of posters
    flagged out of domain, and micro-F1 when only the most confident genre answers are accepted."""
    rows = []
    interval = (metrics.get("score") or {}).get("interval")
    if interval:
        rows.append(MetricRow(f"Score interval ({interval['level']:.0%}): share of true scores inside", NEUTRAL,
                              [interval["coverage"]], [False]))
        rows.append(MetricRow("Score interval: mean width", LOWER, [interval["mean_width"]], [False]))
    if metrics.get("domain"):
        rows.append(MetricRow(f"Flagged out of domain (domain score below {metrics['domain']['below']})", NEUTRAL,
                              [metrics["domain"]["flagged"]], [False]))
    accepted = (metrics.get("genre") or {}).get("accepted")
    if accepted:
        for share in ("0.5", "0.8", "1.0"):
            rows.append(MetricRow(f"Micro F1 of the {float(share):.0%} most confident genre answers", HIGHER,
                                  [accepted[share]], [False]))
    return MetricTable("How far to trust it", ["Model"], rows) if rows else None


# --- images --------------------------------------------------------------------------------

def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(path: str | Path | None, size: tuple[int, int] = THUMBNAIL) -> str | None:
    """A poster as a small JPEG data URI; None when there is no readable file."""
    if not path:
        return None
    try:
        image = images.decode(path, images.read_poster_bytes(path), size)
    except images.PosterError:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80, optimize=True)
    return data_uri(buffer.getvalue(), "image/jpeg")


def _figure(width: float, height: float) -> Figure:
    """A matplotlib ``Figure``: no pyplot state, no backend switch."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: Path) -> str:
    """Write ``fig`` as PNG to ``path`` (atomically); return the same PNG as a data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    data = buffer.getvalue()
    with safeio.atomic_write(path, "wb") as fh:
        fh.write(data)
    return data_uri(data, "image/png")


# --- figures -------------------------------------------------------------------------------

def plot_curves(curves: pd.DataFrame) -> Figure:
    groups = list(curves.groupby("model"))
    fig = _figure(9, 3.2)
    for ax, (name, part) in zip(fig.subplots(1, max(1, len(groups)), squeeze=False)[0], groups):
        ax.plot(part["epoch"], part["train_loss"], label="train")
        ax.plot(part["epoch"], part["valid_loss"], label="validation")
        ax.set(title=f"{name} head (fit_one_cycle)", xlabel="epoch", ylabel="loss")
        ax.legend()
    return fig


def plot_reliability(table: pd.DataFrame) -> Figure:
    fig = _figure(4.2, 4)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot(table["predicted"], table["observed"], "o-", label="model")
    ax.set(title="Reliability (all genres)", xlabel="predicted probability", ylabel="observed frequency")
    ax.legend()
    return fig


def plot_per_genre(per_genre: pd.DataFrame) -> Figure:
    table = per_genre.sort_values("support", ascending=False)
    x = np.arange(len(table))
    fig = _figure(9, 3.6)
    ax = fig.subplots()
    ax.bar(x - 0.2, table["f1"], 0.4, label="F1")
    ax.bar(x + 0.2, table["ap"], 0.4, label="AP")
    ax.set_xticks(x, table["genre"], rotation=60, ha="right")
    ax.set(title="Per-genre F1 and average precision", ylim=(0, 1))
    ax.legend()
    return fig


def plot_pr_curves(Y: np.ndarray, P: np.ndarray, per_genre: pd.DataFrame, columns: int = 6) -> Figure:
    """One precision-recall curve per genre, with its AP, support and chance level (prevalence)."""
    from sklearn.metrics import precision_recall_curve

    lines = -(-len(per_genre) // columns)
    fig = _figure(2.0 * columns, 1.9 * lines)
    axes = fig.subplots(lines, columns, squeeze=False, sharex=True, sharey=True).ravel()
    for ax in axes[len(per_genre):]:
        ax.axis("off")
    for j, (ax, row) in enumerate(zip(axes, per_genre.itertuples())):
        ax.axhline(row.prevalence, ls="--", color="grey", lw=1)
        if Y[:, j].any():
            precision, recall, _ = precision_recall_curve(Y[:, j], P[:, j])
            ax.step(recall, precision, where="post", lw=1.4)
        ax.set_title(f"{row.genre} (n={row.support})\nAP {row.ap:.2f}, chance {row.prevalence:.2f}", fontsize=8)
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.tick_params(labelsize=7)
    fig.supxlabel("recall", fontsize=8)
    fig.supylabel("precision", fontsize=8)
    return fig


def plot_scores(true: np.ndarray, pred: np.ndarray) -> Figure:
    """Predicted vs true score, and the residual (predicted - true) against the true score."""
    fig = _figure(8.4, 3.8)
    scatter, residual = fig.subplots(1, 2)
    scatter.scatter(true, pred, s=8, alpha=0.5)
    scatter.plot([1, 10], [1, 10], "--", color="grey")
    scatter.set(title="Predicted vs true score", xlabel="IMDb score", ylabel="predicted", xlim=(1, 10), ylim=(1, 10))
    residual.scatter(true, pred - true, s=8, alpha=0.5)
    residual.axhline(0, ls="--", color="grey")
    residual.set(title="Residual vs true score", xlabel="IMDb score", ylabel="predicted - true", xlim=(1, 10))
    return fig


def plot_intervals(coverage: dict[str, dict]) -> Figure:
    """Score intervals: coverage against the level asked for (on the diagonal: as promised), and mean width."""
    levels = [v["level"] for v in coverage.values()]
    fig = _figure(8.4, 3.4)
    cover, width = fig.subplots(1, 2)
    cover.plot(levels, [v["coverage"] for v in coverage.values()], "o-")
    cover.plot([0.4, 1], [0.4, 1], "--", color="grey")
    cover.set(title="Coverage of the score intervals", xlabel="level asked for", ylabel="share of true scores inside",
              xlim=(0.45, 1), ylim=(0.4, 1))
    width.plot(levels, [v["mean_width"] for v in coverage.values()], "o-")
    width.set(title="Mean width", xlabel="level asked for", ylabel="score points")
    return fig


def plot_accepted(accepted: dict[str, float], overall: float) -> Figure:
    """Micro-F1 of the genre answers a person would not check: the most confident share of posters."""
    fig = _figure(4.6, 3.4)
    ax = fig.subplots()
    shares = [float(s) for s in accepted]
    ax.plot(shares, list(accepted.values()), "o-")
    ax.axhline(overall, ls="--", color="grey", label="all posters")
    ax.set(title="Accepting the most confident answers", xlabel="share of posters accepted (the rest to a person)",
           ylabel="micro F1 of those accepted", xlim=(0, 1.02))
    ax.legend(fontsize=8)
    return fig


def plot_genre_distribution(counts: dict[str, int], n_train: int) -> Figure:
    names = list(counts)
    values = np.array([counts[g] for g in names])
    fig = _figure(9, 3.4)
    ax = fig.subplots()
    bars = ax.bar(names, values)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{100 * v / n_train:.0f}%", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set(title=f"Training set: posters per genre (share of {n_train})", ylabel="posters")
    return fig


def wrap(text: str, width: int = CAPTION_WIDTH) -> str:
    """``text`` on lines of at most ``width`` characters (genre lists break after a ``|``)."""
    return "\n".join(textwrap.wrap(text.replace("|", "| "), width, break_long_words=True)).replace("| ", "|")


def poster_caption(row) -> str:
    return "\n".join([wrap(row.title), wrap(f"true: {row.true}"), wrap(f"pred: {row.predicted}"),
                      f"score {row.score:.1f} / pred {row.predicted_score:.1f}"])


def plot_poster_grid(rows: pd.DataFrame, columns: int = 6) -> Figure:
    """Sample posters with true and predicted genres and scores; captions wrap, never cut."""
    captions = [poster_caption(row) for row in rows.itertuples()]
    height = 2.9 + 0.13 * max((c.count("\n") + 1 for c in captions), default=1)
    fig = _figure(2.2 * columns, height * -(-len(rows) // columns))
    axes = fig.subplots(-(-len(rows) // columns), columns, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, row, caption in zip(axes, rows.itertuples(), captions):
        try:
            ax.imshow(images.decode(row.path, images.read_poster_bytes(row.path), (200, 300)))
        except images.PosterError:
            pass
        ax.set_title(caption, fontsize=7)
    return fig


# --- the page ------------------------------------------------------------------------------

def _number(value, digits: int = 3) -> str:
    """A table cell: a number with ``digits`` decimals, or a dash where there is none."""
    if value is None or math.isnan(float(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def render(page: Page) -> str:
    """The HTML of ``page`` (Jinja2, every value escaped)."""
    import json

    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("posterlens.workflows", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["number"] = _number
    env.filters["pretty_json"] = lambda obj: json.dumps(obj, indent=2, ensure_ascii=False)
    return env.get_template("report.html").render(page=page, HIGHER=HIGHER, LOWER=LOWER)


def write_html(out: Path, page: Page) -> Path:
    """Write ``out/report.html`` (atomically); return its path."""
    return safeio.write_text(Path(out) / "report.html", render(page))
