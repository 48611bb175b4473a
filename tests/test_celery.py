"""The DAG on real services: PostgreSQL, Redis, Airflow's CeleryExecutor and two workers.

``scripts/celery_cluster.py`` starts them on 127.0.0.1 with their data in a temporary
folder; the sample's posters are served from 127.0.0.1 too. Two runs on the sample in
shards of 80 posters: the first must spread the mapped shards over both workers; in the
second a worker is SIGKILLed part way through an ``embed`` shard, and the run must still
finish on the other worker without embedding any poster twice. Last, stopping the
cluster must leave no process, no listener and no folder behind.

The shard files those runs read are checked first, without services: together they are
the catalogue table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import celery_cluster  # noqa: E402

SHARD_SIZE = 80  # the sample's 240 posters in 3 shards
EPOCHS = 3
OUTPUTS = ("model/config.json", "model/genre_model.safetensors", "model/score_model.safetensors", "report/metrics.json",
           "report/report.html", "predictions/predictions_score.csv", "predictions/predictions_genre.csv",
           "predictions/predictions_final.csv", "summary.json")


def _require_servers() -> None:
    """Install PostgreSQL and Redis if they are missing and we may; skip if that is not possible."""
    if not all(celery_cluster.server_binaries().values()) and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["bash", str(REPO / "scripts" / "install_system_packages.sh")], check=False)
    missing = [name for name, path in celery_cluster.server_binaries().items() if path is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed, and cannot be installed here (needs root and apt-get)")


@pytest.fixture(scope="module")
def cluster():
    _require_servers()
    with celery_cluster.Cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def sample_served(cluster, sample_dir):
    """The sample catalogue with its Poster URLs on a 127.0.0.1 server, and the runs' folder."""
    with celery_cluster.serve_folder(sample_dir / "images") as base_url:
        work = cluster.root / "runs"
        yield celery_cluster.catalog_with_urls(sample_dir / "MovieGenre.csv", base_url, work / "MovieGenre.csv"), work


@pytest.fixture(scope="module")
def distributed(cluster, sample_served) -> celery_cluster.Run:
    catalog, work = sample_served
    run = celery_cluster.run_sample(cluster, catalog, work, "distributed", SHARD_SIZE, EPOCHS)
    print(run)
    return run


@pytest.fixture(scope="module")
def worker_killed(cluster, sample_served, distributed) -> celery_cluster.Run:
    """A second run with a feature cache of its own; a worker is killed during ``embed``."""
    catalog, work = sample_served
    celery_cluster.reuse_onnx_export(distributed, work, "worker-killed")
    run = celery_cluster.run_sample(cluster, catalog, work, "worker-killed", SHARD_SIZE, EPOCHS, kill_worker=True)
    print(run)
    return run


def _distinct_posters(run: celery_cluster.Run) -> int:
    from posterlens.data.images import content_hash

    return len({content_hash(p.read_bytes()) for p in Path(run.conf["images"]).glob("*.jpg")})


def _check_outputs(cluster: celery_cluster.Cluster, run: celery_cluster.Run, sample_rows: pd.DataFrame) -> None:
    assert run.state == "success", cluster.diagnose(run.run_id)
    out = Path(run.conf["out"])
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    holdout = json.loads((out / "model" / "config.json").read_text())["holdout_ids"]
    final = pd.read_csv(out / "predictions" / "predictions_final.csv")
    assert sorted(Path(f).stem for f in final["file"]) == sorted(holdout)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_images"] == len(holdout)
    assert sum(summary["fetch"].values()) == len(sample_rows)


def _check_embedded_once(run: celery_cluster.Run) -> list[str]:
    keys = celery_cluster.cached_keys(Path(run.conf["out"]) / "cache")
    assert [k for k, n in Counter(keys).items() if n > 1] == []  # no poster embedded twice
    assert len(keys) == _distinct_posters(run)
    return keys


def test_shard_files_hold_the_catalogue(tmp_path, sample_dir):
    from posterlens.app import pipeline
    from posterlens.data import catalog

    config = pipeline.PipelineConfig(catalog=str(sample_dir / "MovieGenre.csv"), images=str(sample_dir / "images"),
                                     out=str(tmp_path), shard_size=SHARD_SIZE)
    assert pipeline.check_inputs(config)["shards"] == 3
    parts = [pipeline.shard_movies(config, shard) for shard in pipeline.shards(config)]
    assert [len(p) for p in parts] == [SHARD_SIZE] * 3
    original = catalog.read_catalog(config.catalog, config.images, require_posters=False)
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), original)


@pytest.mark.slow
def test_distributed_run_writes_every_output(cluster, distributed, sample_rows):
    _check_outputs(cluster, distributed, sample_rows)
    assert json.loads((Path(distributed.conf["out"]) / "summary.json").read_text())["fetch"] == {"ok": len(sample_rows)}


@pytest.mark.slow
def test_mapped_shards_run_on_both_workers(distributed, sample_rows):
    mapped = [ti for ti in distributed.tasks if ti["task"] in celery_cluster.MAPPED_TASKS]
    assert len(mapped) == 2 * -(-len(sample_rows) // SHARD_SIZE)
    assert {ti["hostname"] for ti in mapped} == set(celery_cluster.WORKERS)


@pytest.mark.slow
def test_distributed_run_embeds_each_poster_once(distributed):
    _check_embedded_once(distributed)
    assert sum(r["computed"] for r in distributed.embedded.values()) == _distinct_posters(distributed)
    assert celery_cluster.check_cache(distributed)["written_once"]  # the index agrees with the chunk files


@pytest.mark.slow
def test_throughput_counts_each_poster_on_the_worker_that_embedded_it(distributed):
    speed = celery_cluster.throughput(distributed)
    assert set(speed["workers"]) == set(celery_cluster.WORKERS)
    assert sum(w["posters"] for w in speed["workers"].values()) == speed["embed"]["computed"] == _distinct_posters(distributed)
    assert speed["cluster_posters_per_s"] > 0 and all(w["posters_per_s"] > 0 for w in speed["workers"].values())


@pytest.mark.slow
def test_run_finishes_after_a_worker_is_killed(cluster, worker_killed, sample_rows):
    killed = worker_killed.killed
    assert killed, "no embed shard was caught part way through"
    _check_outputs(cluster, worker_killed, sample_rows)
    (survivor,) = set(celery_cluster.WORKERS) - {killed["hostname"]}
    (retried,) = [ti for ti in worker_killed.tasks if (ti["task"], ti["map_index"]) == ("embed", killed["map_index"])]
    assert retried["try"] >= 2 and retried["hostname"] == survivor
    earlier = [ti for ti in worker_killed.earlier_tries if (ti["task"], ti["map_index"]) == ("embed", killed["map_index"])]
    assert earlier[0]["hostname"] == killed["hostname"] and earlier[0]["state"] != "success"
    assert not cluster.services[killed["hostname"]].alive()


@pytest.mark.slow
def test_nothing_cached_is_computed_again_after_the_kill(worker_killed):
    _check_embedded_once(worker_killed)
    counts = worker_killed.embedded
    killed = worker_killed.killed
    assert counts[killed["map_index"]]["cached"] >= killed["cached_at_kill"] > 0  # the killed try's work was kept
    assert sum(r["computed"] + r["cached"] for r in counts.values()) == _distinct_posters(worker_killed)
    assert celery_cluster.check_cache(worker_killed)["written_once"]
    speed = celery_cluster.throughput(worker_killed)  # the killed try's posters count on the killed worker
    assert speed["workers"][killed["hostname"]]["killed_try"]["posters"] == killed["cached_at_kill"]
    assert sum(w["posters"] for w in speed["workers"].values()) == speed["embed"]["computed"] + killed["cached_at_kill"]


@pytest.mark.slow
def test_stop_leaves_no_process_listener_or_folder(cluster, worker_killed):
    services, ports, root = list(cluster.services.values()), dict(cluster.ports), cluster.root
    cluster.stop()
    assert [s.name for s in services if s.alive()] == []
    assert [name for name, port in ports.items() if celery_cluster.listening(port)] == []
    assert not root.exists()
