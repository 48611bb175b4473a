"""Figures and the one-page HTML report of an evaluation."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from posterlens import safeio


def _subplots(*grid: int, **options):
    """A matplotlib ``Figure`` and its axes: no pyplot state, no backend switch."""
    from matplotlib.figure import Figure

    figsize = options.pop("figsize")
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **options)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def plot_curves(curves: pd.DataFrame, path: Path) -> Path:
    fig, axes = _subplots(1, max(1, curves["model"].nunique()), figsize=(9, 3.2), squeeze=False)
    for ax, (name, part) in zip(axes[0], curves.groupby("model")):
        ax.plot(part["epoch"], part["train_loss"], label="train")
        ax.plot(part["epoch"], part["valid_loss"], label="validation")
        ax.set(title=f"{name} head (fit_one_cycle)", xlabel="epoch", ylabel="loss")
        ax.legend()
    return _save(fig, path)


def plot_reliability(table: pd.DataFrame, path: Path) -> Path:
    fig, ax = _subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot(table["predicted"], table["observed"], "o-", label="model")
    ax.set(title="Reliability (all genres)", xlabel="predicted probability", ylabel="observed frequency")
    ax.legend()
    return _save(fig, path)


def plot_per_genre(per_genre: pd.DataFrame, path: Path) -> Path:
    table = per_genre.sort_values("support", ascending=False)
    x = np.arange(len(table))
    fig, ax = _subplots(figsize=(9, 3.6))
    ax.bar(x - 0.2, table["f1"], 0.4, label="F1")
    ax.bar(x + 0.2, table["ap"], 0.4, label="AP")
    ax.set_xticks(x, table["genre"], rotation=60, ha="right")
    ax.set(title="Per-genre F1 and average precision", ylim=(0, 1))
    ax.legend()
    return _save(fig, path)


def plot_scores(true: np.ndarray, pred: np.ndarray, path: Path) -> Path:
    fig, ax = _subplots(figsize=(4.2, 4))
    ax.scatter(true, pred, s=6, alpha=0.4)
    ax.plot([1, 10], [1, 10], "--", color="grey")
    ax.set(title="Predicted vs true score", xlabel="IMDb score", ylabel="predicted", xlim=(1, 10), ylim=(1, 10))
    return _save(fig, path)


def plot_genre_distribution(counts: dict[str, int], n_train: int, path: Path) -> Path:
    names = list(counts)
    values = np.array([counts[g] for g in names])
    fig, ax = _subplots(figsize=(9, 3.4))
    bars = ax.bar(names, values)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{100 * v / n_train:.0f}%", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set(title=f"Training set: posters per genre (share of {n_train})", ylabel="posters")
    return _save(fig, path)


def plot_poster_grid(rows: pd.DataFrame, path: Path, columns: int = 6) -> Path:
    """Sample posters with true and predicted genres (and scores)."""
    from PIL import Image

    n = len(rows)
    lines = (n + columns - 1) // columns
    fig, axes = _subplots(lines, columns, figsize=(2.1 * columns, 4.1 * lines), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows.itertuples()):
        with Image.open(row.path) as image:
            image.thumbnail((200, 300))
            ax.imshow(image.convert("RGB"))
        ax.set_title(f"{row.title[:24]}\ntrue: {row.true[:28]}\npred: {row.predicted[:28]}\n"
                     f"score {row.score:.1f} / pred {row.predicted_score:.1f}", fontsize=7)
    return _save(fig, path)


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, classes="t")


def _metrics_html(metrics: dict) -> str:
    genre = metrics["genre"]
    names = [k for k in genre if k != "baselines"]
    rows = {"model": genre, **{f"baseline: {k}": v for k, v in genre["baselines"].items()}}
    frame = pd.DataFrame([{"": label, **{n: values.get(n, float("nan")) for n in names}} for label, values in rows.items()])
    parts = [_table_html(frame)]
    if metrics.get("score"):
        parts.append(_table_html(pd.DataFrame([metrics["score"]])))
    if metrics.get("similar"):
        parts.append(_table_html(pd.DataFrame([metrics["similar"]])))
    return "\n".join(parts)


def write_html(out: Path, metrics: dict, per_genre: pd.DataFrame, confusions: pd.DataFrame,
               figures: list[Path], title: str = "posterlens evaluation") -> Path:
    """One page: headline metrics with baselines, figures, per-genre table, confusions."""
    images = "\n".join(f'<figure><img src="{html.escape(f.name)}" alt="{html.escape(f.stem)}"></figure>' for f in figures)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table.t{{border-collapse:collapse;font-size:13px}}
table.t td,table.t th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}} img{{max-width:100%}}
figure{{display:inline-block;margin:0.5em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{metrics['n_posters']} posters the model never saw in training, {metrics['n_genres']} genres.
Baselines use the same metrics: a model with no skill already reaches a high binary accuracy.</p>
<h2>Metrics</h2>
{_metrics_html(metrics)}
<h2>Figures</h2>
{images}
<h2>Per genre</h2>
{_table_html(per_genre)}
<h2>Most frequent confusions (true genre missed &rarr; genre predicted instead)</h2>
{_table_html(confusions)}
<details><summary>metrics.json</summary><pre>{html.escape(json.dumps(metrics, indent=2))}</pre></details>
</body></html>"""
    path = out / "report.html"
    safeio.write_text(path, page)
    return path
