"""The main job end to end: the stages the Airflow DAG wires together, and ``make demo``.

Each stage takes a ``PipelineConfig`` (plain paths and numbers, so it travels between
Airflow tasks as a dict) and returns a small dict. Stages are idempotent: posters already
downloaded and embeddings already cached are reused, and re-running a stage rewrites
only its own outputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from posterlens.data.fetch_config import FetchConfig
from posterlens.features.backbones import DEFAULT_FEATURES
from posterlens.models.fitted import PARAM_RULES
from posterlens.settings import Range, check
from posterlens.workflows.config import TrainConfig

__all__ = ["PipelineConfig", "check_inputs", "write_shards", "shards", "shard_movies", "fetch_shard", "embed_shard",
           "train_models", "evaluate_model", "holdout_posters", "predict_posters", "merge_predictions", "summarise",
           "run"]

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """What a pipeline run reads and writes (the DAG's params)."""

    catalog: str
    images: str
    out: str
    backbone: str = "+".join(DEFAULT_FEATURES)  # one backbone, or several joined by "+"
    epochs: int | None = None  # None: the genre model's default
    shard_size: int = 500
    concurrency: int = FetchConfig.concurrency
    min_genre_count: int = TrainConfig.min_genre_count
    cache: str | None = None  # default: <out>/cache, settled in __post_init__
    allow_private_hosts: bool = False  # let fetch download from loopback/private addresses (local tests)

    RULES = {"shard_size": Range(1, 10_000_000, integer=True), "concurrency": FetchConfig.RULES["concurrency"],
             "min_genre_count": TrainConfig.RULES["min_genre_count"], "epochs": replace(PARAM_RULES["GenreClassifier"]["epochs"], none=True)}

    def __post_init__(self) -> None:
        self.cache = self.cache or str(Path(self.out) / "cache")

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache)

    def train_config(self):
        """The training settings of this run; the holdout is kept out of the model so ``evaluate_model`` can use it."""
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
    from posterlens.data import catalog

    return catalog.read_catalog(config.catalog, config.images, require_posters=False)


def check_inputs(config: PipelineConfig) -> dict:
    """Fail early, naming the input at fault; count what the catalogue offers.

    The catalogue is parsed here, once a run, and split into the shard files that
    ``shards``, ``fetch_shard`` and ``embed_shard`` read.
    """
    config.train_config().feature_spec()
    check(PipelineConfig.RULES, vars(config), "pipeline")
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
    from posterlens.data.catalog import movie_table, poster_candidates

    images = Path(config.images)
    records = [json.loads(line) for line in Path(shard["rows"]).read_text().splitlines()]
    for record in records:
        names = poster_candidates(record["id"], record["url"])
        record["path"] = next((str(images / n) for n in names if (images / n).is_file()), None)
        record["score"] = float("nan") if record["score"] is None else record["score"]
    return movie_table(records)


def fetch_shard(config: PipelineConfig, shard: dict) -> dict:
    """Download one shard's posters (valid files already there are kept)."""
    from posterlens.data.fetch import fetch_posters

    rows = shard_movies(config, shard)
    manifest = config.manifests_dir / f"fetch-{shard['shard']:04d}.csv"
    fetch_config = FetchConfig(concurrency=config.concurrency, allow_private_hosts=config.allow_private_hosts)
    summary = fetch_posters(rows, Path(config.images), fetch_config, progress=False, manifest=manifest)
    return {**shard, "counts": summary.counts, "manifest": str(manifest)}


def embed_shard(config: PipelineConfig, shard: dict) -> dict:
    """Embed one shard's posters into the shared feature cache, with the engine ``auto`` picks
    for the whole catalogue (int8 pays for a large one, not for each shard alone), so that every
    shard's embeddings come from the same engine."""
    from posterlens.features.embed import embed
    from posterlens.features.engines import resolve_engine

    files = shard_movies(config, shard)["path"].dropna().tolist()
    spec = config.train_config().feature_spec()
    movies = max(part["stop"] for part in shards(config))
    engine = resolve_engine("auto", spec.backbones, config.cache_dir, posters=movies)
    result = embed(files, spec, config.cache_dir, engine=engine, progress=False)
    return {**shard, "computed": result.computed, "cached": result.cached, "failed": len(result.errors)}


def train_models(config: PipelineConfig) -> dict:
    """Train the genre and score models (one model directory)."""
    from posterlens.workflows import train

    result = train.train(Path(config.catalog), Path(config.images), config.model_dir, config.train_config(),
                         config.cache_dir, progress=False)
    return {"model_dir": str(result.model_dir), "genres": len(result.model.genres), "n_train": result.model.info["n_train"],
            "n_holdout": len(result.model.info["holdout_ids"]), "seconds": round(result.seconds["total"], 1)}


def evaluate_model(config: PipelineConfig) -> dict:
    """Evaluate on the held-out posters; returns the headline metrics."""
    from posterlens.workflows import evaluate

    result = evaluate.evaluate(config.model_dir, Path(config.catalog), Path(config.images), config.report_dir,
                               config.cache_dir, progress=False)
    genre, score = result.metrics["genre"] or {}, result.metrics["score"] or {}
    return {"report": str(result.report), "macro_map": genre.get("macro_map"), "micro_f1": genre.get("micro_f1"),
            "macro_f1": genre.get("macro_f1"), "score_mae": score.get("mae")}


def holdout_posters(config: PipelineConfig) -> list[str]:
    """The held-out posters (the model never saw them): the pipeline's test images."""
    from posterlens.models.directory import read_config

    holdout = set(read_config(config.model_dir)["holdout_ids"])
    movies = _movies(config)
    return movies.loc[movies["id"].isin(holdout) & movies["path"].notna(), "path"].tolist()


def predict_posters(config: PipelineConfig) -> dict:
    """Score and genre predictions for the test images (the score, genre and error CSV files)."""
    from posterlens.app import outputs
    from posterlens.workflows import predict

    files = holdout_posters(config)
    result = predict.load(config.model_dir, config.cache_dir).predict(files, warn=False)
    written = outputs.write_parts(result, config.predictions_dir)
    return {"predicted": len(result), "errors": len(result.attrs["errors"]), "files": [str(p) for p in written.values()]}


def merge_predictions(config: PipelineConfig) -> dict:
    """One table: the score and genre predictions merged on the file."""
    from posterlens.app import outputs

    final = outputs.merge_files(config.predictions_dir)
    return {"final": str(final), "rows": len(pd.read_csv(final))}


def summarise(config: PipelineConfig) -> dict:
    """Summary of the run and of the test images, written to ``<out>/summary.json``."""
    manifests = sorted(config.manifests_dir.glob("fetch-*.csv"))
    fetched = pd.concat([pd.read_csv(m) for m in manifests]) if manifests else pd.DataFrame({"status": []})
    final = pd.read_csv(config.predictions_dir / "predictions_final.csv", keep_default_na=False)
    labels = final["predicted_labels"] if "predicted_labels" in final else []  # none from a score-only model
    genres = pd.Series([g for names in labels for g in names.split("|") if g], dtype=str)
    metrics = json.loads((config.report_dir / "metrics.json").read_text())
    summary = {
        "fetch": fetched["status"].value_counts().to_dict(),
        "test_images": len(final),
        "mean_predicted_score": round(float(final["score"].mean()), 2) if len(final) and "score" in final else None,
        "predicted_genres": genres.value_counts().head(10).to_dict(),
        "macro_map": (metrics.get("genre") or {}).get("macro_map"),
        "score_mae": (metrics.get("score") or {}).get("mae"),
        "report": str(config.report_dir / "report.html"),
        "predictions": str(config.predictions_dir / "predictions_final.csv"),
    }
    (Path(config.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


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
