"""The Airflow DAG: it loads, runs end to end with real Airflow, and reuses its work on a re-run.

Airflow reads AIRFLOW_HOME when first imported, so it is set (to a temporary folder) at
collection time, before anything imports airflow; ``airflow db migrate`` runs once.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_ENV = {
    "AIRFLOW_HOME": tempfile.mkdtemp(prefix="posterlens-airflow-"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
}
os.environ.update(AIRFLOW_ENV)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def airflow_db() -> None:
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env={**os.environ, **AIRFLOW_ENV})


@pytest.fixture(scope="module")
def poster_server(sample_dir):
    """The sample posters over HTTP on 127.0.0.1."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(sample_dir / "images")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def catalog_with_urls(tmp_path_factory, sample_dir, poster_server) -> Path:
    rows = pd.read_csv(sample_dir / "MovieGenre.csv")
    rows["Poster"] = [f"{poster_server}/tt{i:07d}.jpg" for i in rows["imdbId"]]
    path = tmp_path_factory.mktemp("dag") / "MovieGenre.csv"
    rows.to_csv(path, index=False)
    return path


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag("posterlens_pipeline")


def test_dag_folder_loads_without_import_errors(airflow_db):
    dag = _dag()
    assert {"check_inputs", "fetch_posters", "embed", "train", "evaluate", "predict", "merge_predictions", "report"} <= set(dag.task_ids)


@pytest.fixture(scope="module")
def dag_runs(airflow_db, catalog_with_urls, tmp_path_factory):
    """Two runs of the DAG on the sample, posters served over HTTP."""
    out = tmp_path_factory.mktemp("run")
    conf = {"catalog": str(catalog_with_urls), "images": str(out / "images"), "out": str(out / "run"),
            "shard_size": 100, "min_genre_count": 10, "epochs": 10, "allow_private_hosts": True}
    dag = _dag()
    first = dag.test(run_conf=conf)
    first_summary = json.loads((out / "run" / "summary.json").read_text())
    cache_files = sorted(p.name for p in (out / "run" / "cache" / "features").rglob("*.safetensors"))
    second = dag.test(run_conf=conf)
    return {"conf": conf, "out": out / "run", "states": (first.state, second.state), "first": first_summary,
            "second": json.loads((out / "run" / "summary.json").read_text()), "cache_files": cache_files}


def test_dag_runs_end_to_end(dag_runs, sample_rows):
    assert dag_runs["states"] == ("success", "success")
    out = dag_runs["out"]
    n = len(sample_rows)
    assert dag_runs["first"]["fetch"] == {"ok": n}
    for name in ("model/config.json", "model/genre_model.safetensors", "model/score_model.safetensors",
                 "report/metrics.json", "report/report.html", "predictions/predictions_score.csv",
                 "predictions/predictions_genre.csv", "predictions/predictions_final.csv", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    holdout = json.loads((out / "model" / "config.json").read_text())["holdout_ids"]
    final = pd.read_csv(out / "predictions" / "predictions_final.csv")
    assert list(final.columns) == ["file", "score", "score_low", "score_high", "predicted_labels", "raw_probs",
                                   "genre_confidence", "domain_score", "in_domain"]
    assert sorted(Path(f).stem for f in final["file"]) == sorted(holdout)
    assert json.loads((out / "report" / "metrics.json").read_text())["n_posters"] == len(holdout)


def test_second_run_reuses_posters_and_embeddings(dag_runs, sample_rows):
    assert dag_runs["second"]["fetch"] == {"cached": len(sample_rows)}
    after = sorted(p.name for p in (dag_runs["out"] / "cache" / "features").rglob("*.safetensors"))
    assert after == dag_runs["cache_files"]  # nothing was embedded again


def test_cli_and_dag_predict_the_same(dag_runs, tmp_path):
    from typer.testing import CliRunner

    from posterlens.app.cli import app
    from posterlens.app.pipeline import PipelineConfig, holdout_posters

    config = PipelineConfig(**dag_runs["conf"])
    files = holdout_posters(config)
    result = CliRunner().invoke(app, ["predict", *files, "--model", str(config.model_dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    cli = pd.read_csv(tmp_path / "predictions_final.csv").sort_values("file").reset_index(drop=True)
    dag = pd.read_csv(config.predictions_dir / "predictions_final.csv").sort_values("file").reset_index(drop=True)
    pd.testing.assert_frame_equal(cli, dag)
