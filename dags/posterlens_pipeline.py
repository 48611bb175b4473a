"""posterlens as an Airflow DAG: a thin shell over ``posterlens.app.pipeline``.

check_inputs -> fetch_posters (mapped over shards) -> embed (mapped over the same shards)
-> train -> evaluate -> predict -> merge_predictions -> report

Tasks pass a config dict, shard ranges and small result dicts; posters, features and
models travel as files under the run's ``out`` folder and the shared cache. The genre
and score models are trained in one task: they share one model directory whose
config.json checksums every file, and both fit in seconds on cached embeddings.
"""

from __future__ import annotations

import dataclasses

from airflow.sdk import Param, dag, get_current_context, task

from posterlens.app import pipeline

# The fields without a default in PipelineConfig get these; every other default comes from it.
RUN_DEFAULTS = {"catalog": "examples/sample/MovieGenre.csv", "images": "runs/airflow/images", "out": "runs/airflow"}
_JSON_TYPES = {"str": "string", "int": "integer", "bool": "boolean", "None": "null"}


def params() -> dict[str, Param]:
    """The DAG's params: one per ``PipelineConfig`` field, with its default and type."""
    result = {}
    for field in dataclasses.fields(pipeline.PipelineConfig):
        types = [_JSON_TYPES[t.strip()] for t in str(field.type).split("|")]
        default = RUN_DEFAULTS.get(field.name, field.default)
        result[field.name] = Param(default, type=types[0] if len(types) == 1 else types)
    return result


def _config(cfg: dict) -> pipeline.PipelineConfig:
    return pipeline.PipelineConfig(**cfg)


@dag(
    dag_id="posterlens_pipeline",
    schedule=None,
    catchup=False,
    tags=["posterlens"],
    params=params(),
)
def posterlens_pipeline():
    @task
    def check_inputs() -> dict:
        cfg = dict(get_current_context()["params"])
        counts = pipeline.check_inputs(_config(cfg))
        print(f"inputs: {counts}")
        return cfg

    @task
    def make_shards(cfg: dict) -> list[dict]:
        return pipeline.shards(_config(cfg))

    @task
    def fetch_posters(cfg: dict, shard: dict) -> dict:
        return pipeline.fetch_shard(_config(cfg), shard)

    @task
    def embed(cfg: dict, shard: dict) -> dict:
        return pipeline.embed_shard(_config(cfg), shard)

    @task
    def train(cfg: dict, embedded: list[dict]) -> dict:
        return pipeline.train_models(_config(cfg))

    @task
    def evaluate(cfg: dict, trained: dict) -> dict:
        return pipeline.evaluate_model(_config(cfg))

    @task
    def predict(cfg: dict, evaluated: dict) -> dict:
        return pipeline.predict_posters(_config(cfg))

    @task
    def merge_predictions(cfg: dict, predicted: dict) -> dict:
        return pipeline.merge_predictions(_config(cfg))

    @task
    def report(cfg: dict, merged: dict) -> dict:
        summary = pipeline.summarise(_config(cfg))
        print(f"summary: {summary}")
        return summary

    cfg = check_inputs()
    fetched = fetch_posters.partial(cfg=cfg).expand(shard=make_shards(cfg))
    embedded = embed.partial(cfg=cfg).expand(shard=fetched)
    trained = train(cfg, embedded)
    report(cfg, merge_predictions(cfg, predict(cfg, evaluate(cfg, trained))))


posterlens_pipeline()
