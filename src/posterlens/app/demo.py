"""``posterlens demo``: the main job on the bundled sample, told honestly.

The released model predicts the bundled posters it never saw; then ``pipeline.run`` trains,
evaluates and predicts on the same posters, end to end. Everything it reads ships with the
package (``paths.SAMPLE_DIR``, ``paths.RELEASED_DIR``), so it runs from an installed wheel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from posterlens.app.pipeline import PipelineConfig, run
from posterlens.errors import DataError
from posterlens.paths import SAMPLE_DIR, shared_data_dir

__all__ = ["DEMO_MIN_GENRE_COUNT", "sample_catalog", "demo", "released_demo"]

DEMO_MIN_GENRE_COUNT = 10  # a sample of a few hundred posters: keep genres with 10+ training posters


def sample_catalog() -> Path:
    """The bundled sample's ``MovieGenre.csv`` (its posters are in ``images/`` beside it)."""
    path = SAMPLE_DIR / "MovieGenre.csv"
    if not path.is_file():
        raise DataError(f"the bundled sample is missing ({path}): reinstall posterlens")
    return path



def demo(out: Path, cache: Path) -> dict:
    """The main job on the bundled sample, told honestly.

    1. The released model (trained on the development set without these posters) predicts
       the 240 sample posters: true genres beside predicted ones, hits marked, and the
       similar movies of one poster. 2. ``run`` on the sample shows training end to end,
       on a toy amount of data.
    """
    console = Console()
    n = len(pd.read_csv(sample_catalog(), usecols=[0]))
    console.rule(f"1. the released model on the {n} bundled posters it never saw")
    released_demo(console, cache)
    console.rule(f"2. the whole pipeline (train, evaluate, predict) on the same {n} posters")
    config = PipelineConfig(catalog=str(sample_catalog()), images=str(SAMPLE_DIR / "images"), out=str(out),
                            min_genre_count=DEMO_MIN_GENRE_COUNT, cache=str(cache))
    summary = run(config)
    metrics = json.loads((config.report_dir / "metrics.json").read_text())
    genre, score = metrics["genre"], metrics["score"] or {}
    base = genre["baselines"]["top2_constant"]
    from posterlens.models.directory import read_config

    trained_on = read_config(config.model_dir)["n_train"]
    released = _released_training_posters()
    console.print(f"trained on {trained_on} posters, tested on {summary['test_images']}: "
                  f"macro-mAP {genre['macro_map']:.3f}, micro-F1 {genre['micro_f1']:.3f} "
                  f"(top-2 constant: {base['macro_map']:.3f}, {base['micro_f1']:.3f})"
                  + (f"; score MAE {score['mae']:.3f} (the mean: {score['baseline_mae']:.3f})" if score else ""))
    console.print(f"{n} posters are a toy: a model trained on them is barely better than the baselines, and "
                  f"its figures swing with the split. The released model above was trained on {released:,} posters.")
    console.print(f"[bold]report: {summary['report']}[/bold]  predictions: {summary['predictions']}")
    shared = shared_data_dir()
    if shared is not None:
        console.print(f"The full job on the development set: posterlens train -c {shared / 'MovieGenre.csv'} "
                      "-o runs/model, then posterlens evaluate / predict (README).")
    return summary


def released_demo(console: Console, cache: Path, rows: int = 10) -> None:
    """Predict the sample with the released model; print true vs predicted genres and similar movies."""
    from posterlens.data import catalog
    from posterlens.workflows import metrics, predict

    predictor = predict.load(None, cache)
    movies = catalog.read_catalog(sample_catalog())
    found = predictor.predict(movies["path"].tolist(), warn=False)
    table = movies.assign(file=movies["path"].astype(str)).merge(found, on="file", suffixes=("", "_predicted"))
    for row in table.head(rows).itertuples():
        marked = " ".join(f"[green]{g}✓[/green]" if g in row.genres else f"[red]{g}✗[/red]" for g in row.genres_predicted)
        console.print(f"{row.title[:40]:40} true: {'|'.join(row.genres):32} predicted: {marked}  "
                      f"score {row.score:.1f} (predicted {row.score_predicted:.1f})")
    genres = predictor.model.genres
    Y = catalog.genre_matrix(table, genres)
    L = table["genres_predicted"].map(lambda gs: [float(g in gs) for g in genres]).tolist()
    figures = metrics.genre_metrics(Y, table[genres].to_numpy(), pd.DataFrame(L).to_numpy())
    console.print(f"all {len(table)} posters: micro-F1 {figures['micro_f1']:.3f}, macro-mAP {figures['macro_map']:.3f}, "
                  f"{np.mean([len(g) for g in table['genres_predicted']]):.1f} genres a poster predicted "
                  f"({np.mean([len(g) for g in table['genres']]):.1f} true)")
    query = table["file"].iloc[0]
    console.print(f"movies whose posters look like {Path(query).name} ({table['title'].iloc[0]}):")
    console.print(predictor.similar(query, k=5).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


def _released_training_posters() -> int:
    """How many posters the released model was trained on (its ``config.json``)."""
    from posterlens.models.directory import read_config
    from posterlens.paths import RELEASED_DIR

    return int(read_config(RELEASED_DIR)["n_train"])
