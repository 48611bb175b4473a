"""The main job end to end: the stages the Airflow DAG wires together, and ``make demo``.

Each stage takes a ``PipelineConfig`` (plain paths and numbers, so it travels between
Airflow tasks as a dict) and returns a small dict. Stages are idempotent: posters already
downloaded and embeddings already cached are reused, and re-running a stage rewrites
only its own outputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from posterlens.backbones import DEFAULT_FEATURES
from posterlens.images import SAMPLE_DIR

log = logging.getLogger(__name__)

DEMO_MIN_GENRE_COUNT = 10  # the sample has 240 posters: keep genres with 10+ training posters


@dataclass
class PipelineConfig:
    """What a pipeline run reads and writes (the DAG's params)."""

    catalog: str
    images: str
    out: str
    backbone: str = "+".join(DEFAULT_FEATURES)  # one backbone, or several joined by "+"
    epochs: int | None = None  # None: the genre model's default
    shard_size: int = 500
    concurrency: int = 16
    min_genre_count: int = 20
    cache: str | None = None  # default: <out>/cache, settled in __post_init__
    allow_private_hosts: bool = False  # let fetch download from loopback/private addresses (local tests)

    def __post_init__(self) -> None:
        self.cache = self.cache or str(Path(self.out) / "cache")

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache)

    def train_config(self):
        """The training settings of this run; the holdout is kept out of the model so ``evaluate_model`` can use it."""
        from posterlens.train import TrainConfig

        genre = {"epochs": self.epochs} if self.epochs else {}
        return TrainConfig(backbones=self.backbone.split("+"), min_genre_count=self.min_genre_count, refit=False,
                           genre=genre)

    @property
    def model_dir(self) -> Path:
        return Path(self.out) / "model"

    @property
    def report_dir(self) -> Path:
        return Path(self.out) / "report"

    @property
    def predictions_dir(self) -> Path:
        return Path(self.out) / "predictions"

    @property
    def manifests_dir(self) -> Path:
        return Path(self.out) / "manifests"

    @property
    def shards_dir(self) -> Path:
        return Path(self.out) / "shards"


def _movies(config: PipelineConfig) -> pd.DataFrame:
    from posterlens import catalog

    return catalog.read_catalog(config.catalog, config.images, require_posters=False)


def check_inputs(config: PipelineConfig) -> dict:
    """Fail early, naming the input at fault; count what the catalogue offers.

    The catalogue is parsed here, once a run, and split into the shard files that
    ``shards``, ``fetch_shard`` and ``embed_shard`` read.
    """
    config.train_config().feature_spec()
    if config.shard_size < 1 or config.concurrency < 1:
        raise ValueError(f"shard_size and concurrency must be positive (got {config.shard_size}, {config.concurrency})")
    movies = _movies(config)
    Path(config.images).mkdir(parents=True, exist_ok=True)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    written = write_shards(movies, config)
    return {"movies": len(movies), "with_url": int(movies["url"].notna().sum()),
            "with_poster": int(movies["path"].notna().sum()), "shards": len(written)}


def write_shards(movies: pd.DataFrame, config: PipelineConfig) -> list[dict]:
    """One JSON-lines file of movies per shard of ``shard_size`` rows, and their index.

    Poster paths are left out: a shard looks them up when it runs, after the download.
    """
    folder = config.shards_dir
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("movies-*.jsonl"):  # a previous run may have cut other shards
        old.unlink()
    index = []
    for i, start in enumerate(range(0, len(movies), config.shard_size)):
        rows = movies.iloc[start:start + config.shard_size]
        path = folder / f"movies-{i:04d}.jsonl"
        records = rows.drop(columns="path").to_dict("records")
        path.write_text("".join(json.dumps(_json_safe(r)) + "\n" for r in records))
        index.append({"shard": i, "start": start, "stop": start + len(rows), "rows": str(path)})
    (folder / "index.json").write_text(json.dumps(index, indent=1))
    return index


def _json_safe(record: dict) -> dict:
    score = record["score"]
    return {**record, "score": None if pd.isna(score) else float(score)}


def shards(config: PipelineConfig) -> list[dict]:
    """Row ranges of the catalogue, ``shard_size`` movies each, as ``check_inputs`` cut them."""
    index = config.shards_dir / "index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: check_inputs writes it")
    return json.loads(index.read_text())


def shard_movies(config: PipelineConfig, shard: dict) -> pd.DataFrame:
    """One shard's rows of the catalogue table, with the posters now in ``images``.

    Reads only the shard's file and looks for its own posters, so a shard's cost does
    not grow with the catalogue.
    """
    from posterlens.catalog import movie_table, poster_candidates

    images = Path(config.images)
    records = [json.loads(line) for line in Path(shard["rows"]).read_text().splitlines()]
    for record in records:
        names = poster_candidates(record["id"], record["url"])
        record["path"] = next((str(images / n) for n in names if (images / n).is_file()), None)
        record["score"] = float("nan") if record["score"] is None else record["score"]
    return movie_table(records)


def fetch_shard(config: PipelineConfig, shard: dict) -> dict:
    """Download one shard's posters (valid files already there are kept)."""
    from posterlens.fetch import FetchConfig, fetch_posters

    rows = shard_movies(config, shard)
    manifest = config.manifests_dir / f"fetch-{shard['shard']:04d}.csv"
    fetch_config = FetchConfig(concurrency=config.concurrency, allow_private_hosts=config.allow_private_hosts)
    summary = fetch_posters(rows, Path(config.images), fetch_config, progress=False, manifest=manifest)
    return {**shard, "counts": summary.counts, "manifest": str(manifest)}


def embed_shard(config: PipelineConfig, shard: dict) -> dict:
    """Embed one shard's posters into the shared feature cache, with the engine ``auto`` picks
    for the whole catalogue (int8 pays for a large one, not for each shard alone), so that every
    shard's embeddings come from the same engine."""
    from posterlens import features

    files = shard_movies(config, shard)["path"].dropna().tolist()
    spec = config.train_config().feature_spec()
    movies = max(part["stop"] for part in shards(config))
    engine = features.resolve_engine("auto", spec.backbones, config.cache_dir, posters=movies)
    result = features.embed(files, spec, config.cache_dir, engine=engine, progress=False)
    return {**shard, "computed": result.computed, "cached": result.cached, "failed": len(result.errors)}


def train_models(config: PipelineConfig) -> dict:
    """Train the genre and score models (one model directory)."""
    from posterlens import train

    result = train.train(Path(config.catalog), Path(config.images), config.model_dir, config.train_config(),
                         config.cache_dir, progress=False)
    return {"model_dir": str(result.model_dir), "genres": len(result.model.genres), "n_train": result.model.info["n_train"],
            "n_holdout": len(result.model.info["holdout_ids"]), "seconds": round(result.seconds["total"], 1)}


def evaluate_model(config: PipelineConfig) -> dict:
    """Evaluate on the held-out posters; returns the headline metrics."""
    from posterlens import evaluate

    result = evaluate.evaluate(config.model_dir, Path(config.catalog), Path(config.images), config.report_dir,
                               config.cache_dir, progress=False)
    genre, score = result.metrics["genre"], result.metrics["score"] or {}
    return {"report": str(result.report), "macro_map": genre["macro_map"], "micro_f1": genre["micro_f1"],
            "macro_f1": genre["macro_f1"], "score_mae": score.get("mae")}


def holdout_posters(config: PipelineConfig) -> list[str]:
    """The held-out posters (the model never saw them): the pipeline's test images."""
    from posterlens.model import read_config

    holdout = set(read_config(config.model_dir)["holdout_ids"])
    movies = _movies(config)
    return movies.loc[movies["id"].isin(holdout) & movies["path"].notna(), "path"].tolist()


def predict_posters(config: PipelineConfig) -> dict:
    """Score and genre predictions for the test images (the score, genre and error CSV files)."""
    from posterlens import predict

    files = holdout_posters(config)
    result = predict.load(config.model_dir, config.cache_dir).predict(files, warn=False)
    written = predict.write_parts(result, config.predictions_dir)
    return {"predicted": len(result), "errors": len(result.attrs["errors"]), "files": [str(p) for p in written.values()]}


def merge_predictions(config: PipelineConfig) -> dict:
    """One table: the score and genre predictions merged on the file."""
    from posterlens import predict

    final = predict.merge_files(config.predictions_dir)
    return {"final": str(final), "rows": len(pd.read_csv(final))}


def summarise(config: PipelineConfig) -> dict:
    """Summary of the run and of the test images, written to ``<out>/summary.json``."""
    manifests = sorted(config.manifests_dir.glob("fetch-*.csv"))
    fetched = pd.concat([pd.read_csv(m) for m in manifests]) if manifests else pd.DataFrame({"status": []})
    final = pd.read_csv(config.predictions_dir / "predictions_final.csv", keep_default_na=False)
    genres = pd.Series([g for labels in final["predicted_labels"] for g in labels.split("|") if g])
    metrics = json.loads((config.report_dir / "metrics.json").read_text())
    summary = {
        "fetch": fetched["status"].value_counts().to_dict(),
        "test_images": len(final),
        "mean_predicted_score": round(float(final["score"].mean()), 2) if len(final) else None,
        "predicted_genres": genres.value_counts().head(10).to_dict(),
        "macro_map": metrics["genre"]["macro_map"],
        "score_mae": (metrics.get("score") or {}).get("mae"),
        "report": str(config.report_dir / "report.html"),
        "predictions": str(config.predictions_dir / "predictions_final.csv"),
    }
    (Path(config.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def sample_catalog() -> Path:
    """The bundled sample's ``MovieGenre.csv`` (its posters are in ``images/`` beside it)."""
    path = SAMPLE_DIR / "MovieGenre.csv"
    if not path.is_file():
        raise FileNotFoundError(f"bundled sample not found at {path} (run from a clone of the repo)")
    return path


def run(config: PipelineConfig) -> dict:
    """Every stage in the DAG's order, in this process; returns ``summarise``'s summary.

    ``posterlens demo`` runs this on the bundled sample; the Airflow DAG runs the same
    stages as tasks (fetch and embed mapped over shards).
    """
    check_inputs(config)
    parts = shards(config)
    for part in parts:
        fetch_shard(config, part)
    for part in parts:
        embed_shard(config, part)
    train_models(config)
    evaluate_model(config)
    predict_posters(config)
    merge_predictions(config)
    return summarise(config)


SHARED_DATA = SAMPLE_DIR.parents[2] / "shared" / "data" / "posters"  # the development set, beside a clone


def demo(out: Path, cache: Path) -> dict:
    """The main job on the bundled sample, told honestly.

    1. The released model (trained on the development set without these posters) predicts
       the 240 sample posters: true genres beside predicted ones, hits marked, and the
       similar movies of one poster. 2. ``run`` on the sample shows training end to end,
       on a toy amount of data.
    """
    console = Console()
    console.rule("1. the released model on the 240 bundled posters it never saw")
    released_demo(console, cache)
    console.rule("2. the whole pipeline (train, evaluate, predict) on the same 240 posters")
    config = PipelineConfig(catalog=str(sample_catalog()), images=str(SAMPLE_DIR / "images"), out=str(out),
                            min_genre_count=DEMO_MIN_GENRE_COUNT, cache=str(cache))
    summary = run(config)
    metrics = json.loads((config.report_dir / "metrics.json").read_text())
    genre, score = metrics["genre"], metrics["score"] or {}
    base = genre["baselines"]["top2_constant"]
    console.print(f"trained on {240 - summary['test_images']} posters, tested on {summary['test_images']}: "
                  f"macro-mAP {genre['macro_map']:.3f}, micro-F1 {genre['micro_f1']:.3f} "
                  f"(top-2 constant: {base['macro_map']:.3f}, {base['micro_f1']:.3f})"
                  + (f"; score MAE {score['mae']:.3f} (the mean: {score['baseline_mae']:.3f})" if score else ""))
    console.print("240 posters are a toy: a model trained on them is barely better than the baselines, and "
                  "its figures swing with the split. The released model above was trained on 4,482 posters.")
    console.print(f"[bold]report: {summary['report']}[/bold]  predictions: {summary['predictions']}")
    if SHARED_DATA.is_dir():
        console.print(f"The full job on the development set: posterlens train -c {SHARED_DATA / 'MovieGenre.csv'} "
                      "-o runs/model, then posterlens evaluate / predict (README).")
    return summary


def released_demo(console: Console, cache: Path, rows: int = 10) -> None:
    """Predict the sample with the released model; print true vs predicted genres and similar movies."""
    from posterlens import catalog, metrics, predict

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
