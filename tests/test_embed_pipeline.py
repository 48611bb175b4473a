"""The embedding loop: OpenVINO's requests run while the next posters are decoded, results land in order,
the store gets a few large chunk files, and the runners timed for ``--engine auto`` serve the job."""

from __future__ import annotations

import numpy as np
import pytest

from posterlens.features import embed as features
from posterlens.features import engines
from posterlens.features.backbones import resolve

SPEC = resolve()


@pytest.fixture(scope="module")
def openvino(tmp_path_factory):
    """An f32 OpenVINO runner on two threads (batches of 4 or more are split over two requests)."""
    return engines.OpenVINORunner(SPEC, tmp_path_factory.mktemp("openvino"), threads=2)


class Synchronous:
    """The same network called batch by batch, as a runner without ``submit``."""

    def __init__(self, runner):
        self.runner = runner

    def __call__(self, batch):
        return self.runner(batch)


def test_submit_gives_what_a_call_gives(openvino):
    batch = np.random.default_rng(0).integers(0, 256, (6, SPEC.height, SPEC.width, 3), dtype=np.uint8)
    pending = openvino.submit(batch)  # split over the two requests, running in the runner's threads
    assert len(pending.parts) == 2 and openvino.part == 3  # the requests take 3 posters each from now on
    together = pending.result()
    np.testing.assert_array_equal(together, openvino(batch))
    np.testing.assert_array_equal(openvino(batch[:5]), together[:5])  # 3 + 2 posters padded to 3
    np.testing.assert_array_equal(openvino(np.concatenate([batch, batch])), np.concatenate([together, together]))
    assert pending.finished() and openvino.submit(batch[:1]).finished()  # a small batch runs at once


def test_batches_in_flight_land_in_their_rows(posters, tmp_path, openvino):
    (tmp_path / "text.jpg").write_text("not a poster")
    files = posters[:5] + [tmp_path / "text.jpg"] + posters[5:]
    assert features.IN_FLIGHT >= 2  # several batches are computed at once below
    pipelined = features.embed_files(files, SPEC, tmp_path / "a", runner=openvino, batch_size=4, progress=False)
    one_by_one = features.embed_files(files, SPEC, tmp_path / "b", runner=Synchronous(openvino), batch_size=4,
                                      progress=False)
    np.testing.assert_array_equal(pipelined.features, one_by_one.features)
    assert list(pipelined.ok) == [True] * 5 + [False] + [True] * 5 and pipelined.computed == 10


class Summary:
    """A stand-in network: each poster's mean pixel as its features."""

    def __call__(self, batch):
        return np.repeat(batch.mean(axis=(1, 2, 3), dtype=np.float32)[:, None], SPEC.feature_dim, axis=1)


def test_chunk_files_double_up_to_store_rows(posters, tmp_path, monkeypatch):
    from safetensors import safe_open

    monkeypatch.setattr(features, "STORE_ROWS", 4)
    cold = features.embed_files(posters, SPEC, tmp_path, runner=Summary(), batch_size=2, progress=False)
    rows = []
    for chunk in (tmp_path / "features" / SPEC.key).glob("*.safetensors"):
        with safe_open(str(chunk), framework="numpy") as f:
            rows.append(len(f.metadata()["keys"].split(",")))
    assert sorted(rows) == [2, 2, 2, 4]  # the first batch, as many again, then STORE_ROWS; the last 2 at the end
    warm = features.embed_files(posters, SPEC, tmp_path, runner=Summary(), progress=False)
    assert warm.cached == len(posters) and np.array_equal(warm.features, cold.features)


def test_the_runner_timed_for_auto_serves_the_job(monkeypatch, tmp_path):
    monkeypatch.setattr(engines, "int8_available", lambda: False)  # time OpenVINO alone (no int8 model to make)
    made, build = [], engines.OpenVINORunner

    def counted(*args, **kwargs):
        made.append(build(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(engines, "OpenVINORunner", counted)
    assert engines.choose_engine((SPEC,), tmp_path) == "openvino" and len(made) == 1
    assert engines.make_runner(SPEC, tmp_path, "openvino") is made[0]  # compiled and warmed by the timing
    assert engines.make_runner(SPEC, tmp_path, "openvino") is not made[0] and len(made) == 2  # handed out once



def test_int8_models_made_at_once_are_those_made_one_by_one(tmp_path):
    from dataclasses import replace

    from posterlens.features import int8
    from posterlens.features.backbones import weights_path

    alias = replace(SPEC, weights=str(weights_path(SPEC)))  # the same network under another key
    assert alias.key != SPEC.key
    int8.make_int8_models((SPEC, alias), tmp_path / "together")  # two threads
    int8.quantize_int8(SPEC, tmp_path / "alone")
    made = [int8.int8_dir(b, tmp_path / "together") / "model.bin" for b in (SPEC, alias)]
    alone = (int8.int8_dir(SPEC, tmp_path / "alone") / "model.bin").read_bytes()
    assert all(path.read_bytes() == alone for path in made)
