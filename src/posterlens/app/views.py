"""What the CLI shows: rich tables of validation figures, evaluation metrics and predictions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["validation_table", "metrics_table", "trust_rows", "predictions_table", "out_of_domain_note"]

VALIDATION_ROWS = {"genre": ("macro_map", "macro_f1", "micro_f1", "samples_f1", "macro_roc_auc", "genres_per_poster"),
                   "score": ("mae", "spearman", "accuracy")}
# what a figure is read against, where train's validation has it: (group, figure) -> (its key, what it is)
REFERENCES = {("genre", "genres_per_poster"): ("true_genres_per_poster", "true"),
              ("score", "mae"): ("baseline_mae", "predicting the mean")}


def _show(value) -> str:
    """A figure: mean ± std for cross-validation, one value for a holdout."""
    return f"{value['mean']:.3f} ± {value['std']:.3f}" if isinstance(value, dict) else f"{value:.3f}"


def _reference(group: str, name: str, figures: dict) -> str:
    """The baseline of ``name`` in ``figures``: the top-2-constant one (``baselines``, as evaluate
    writes them) or ``REFERENCES``; empty when train did not compute it."""
    top2 = (figures.get("baselines") or {}).get("top2_constant") or {}
    if name in top2:
        return f"{_show(top2[name])} (top-2 constant)"
    key, label = REFERENCES.get((group, name), (None, ""))
    return f"{_show(figures[key])} ({label})" if key in figures else ""


def validation_table(validation: dict) -> Table:
    """Train's headline validation figures next to their baselines."""
    table = Table(title=f"validation: {validation['method']}")
    table.add_column("metric", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    table.add_column("baseline", justify="right", overflow="fold")
    for group, names in VALIDATION_ROWS.items():
        figures = validation.get(group) or {}
        for name in (n for n in names if n in figures):
            table.add_row(f"{group} {name}", _show(figures[name]), _reference(group, name, figures))
    for name, value in trust_rows(validation):
        table.add_row(name, value, "")
    return table


def trust_rows(figures: dict) -> list[tuple[str, str]]:
    """The score interval's coverage and width, the posters flagged out of domain and the micro-F1 of
    the 80% most confident genre answers, where ``figures`` (train's or evaluate's) hold them."""
    rows = []
    interval = (figures.get("score") or {}).get("interval")
    if interval:
        level = interval["level"]["mean"] if isinstance(interval["level"], dict) else interval["level"]
        rows += [(f"score interval {level:.0%}: coverage", _show(interval["coverage"])),
                 ("score interval: mean width", _show(interval["mean_width"]))]
    if figures.get("domain"):
        rows.append(("posters flagged out of domain", _show(figures["domain"]["flagged"])))
    accepted = (figures.get("genre") or {}).get("accepted")
    if accepted:
        rows.append(("genre micro_f1, 80% most confident", _show(accepted["0.8"])))
    return rows


def metrics_table(metrics: dict) -> Table:
    """Evaluate's figures next to the top-2-constant and priors baselines."""
    genre = metrics.get("genre")
    held = f"{metrics['n_genres']} genres" if genre else metrics.get("kind", "score only")
    table = Table(title=f"{metrics['n_posters']} unseen posters, {held}")
    for column in ("metric", "model", "top-2 constant", "priors"):
        table.add_column(column, justify="right", overflow="fold")
    if genre:
        base = genre["baselines"]
        for name in ("macro_map", "macro_f1", "micro_f1", "macro_roc_auc", "binary_accuracy", "hamming_loss", "ece"):
            table.add_row(name, f"{genre[name]:.4f}", f"{base['top2_constant'][name]:.4f}", f"{base['priors'][name]:.4f}")
    if metrics.get("score"):
        score = metrics["score"]
        table.add_row("score MAE", f"{score['mae']:.4f}", "", f"{score['baseline_mae']:.4f} (mean)")
        table.add_row("score Spearman", f"{score['spearman']:.4f}", "", "")
        if "accuracy" in score:
            table.add_row("score class accuracy", f"{score['accuracy']:.4f}", "", "")
    for name, value in trust_rows(metrics):
        table.add_row(name, value, "", "")
    return table


def predictions_table(predictions: pd.DataFrame) -> Table:
    """Poster (marked where it does not look like the training posters), score and its interval,
    genres and their confidence, and the three most likely genres, one row a poster."""
    genres = predictions.attrs["genres"]
    view = Table(title="Predictions")
    for column in ("poster", "score", "genres (confidence)", "top probabilities"):
        view.add_column(column, overflow="fold")
    for row, probs in zip(predictions.itertuples(), predictions[genres].to_numpy()):
        top = sorted(zip(genres, probs), key=lambda kv: -kv[1])[:3]
        flag = " [bold red]not like a movie poster[/]" if row.in_domain is False else ""
        score = f"{row.score:.1f}" + (f" ({row.score_low:.1f}-{row.score_high:.1f})" if row.score_low == row.score_low else "")
        confidence = f" ({row.genre_confidence:.2f})" if row.genre_confidence == row.genre_confidence else ""
        view.add_row(Path(row.file).name + flag, score, (" | ".join(row.genres) or "-") + confidence,
                     ", ".join(f"{g} {p:.2f}" for g, p in top))
    return view


def out_of_domain_note(predictions: pd.DataFrame) -> list[str]:
    """A line for the posters flagged out of domain (``in_domain`` false; NA, a model without a
    domain head, is not), or none."""
    flagged = int((predictions["in_domain"] == False).sum()) if len(predictions) else 0  # noqa: E712 (NA: neither)
    if not flagged:
        return []
    return [f"{flagged} of {len(predictions)} images do not look like the movie posters the model was trained on "
            "(in_domain false): do not trust their answers"]
