"""``--engine auto`` on a machine it has timed: the fastest engine whose embeddings stay faithful,
measured once and kept in the cache (``features.engines.choose_engine``)."""

from __future__ import annotations

import json

import pytest

from posterlens.features import engines
from posterlens.features.backbones import resolve

SPEC = resolve()


def _fake_timings(speeds: dict[str, float], unfaithful: tuple[str, ...] = ()):
    calls = []

    def timings(backbones, cache_dir, candidates):
        calls.append(list(candidates))
        return {e: {"posters_per_s": speeds[e], "least_cosine": 0.9 if e in unfaithful else 0.999,
                    "faithful": e not in unfaithful} for e in candidates}

    return timings, calls


@pytest.fixture
def int8_here(monkeypatch):
    monkeypatch.setattr(engines, "int8_available", lambda: True)
    monkeypatch.setattr(engines, "openvino_available", lambda: True)


def test_the_fastest_faithful_engine_is_chosen_once_and_kept(monkeypatch, tmp_path, int8_here):
    timings, calls = _fake_timings({"openvino": 240.0, engines.INT8: 199.0, "onnx": 50.0})
    monkeypatch.setattr(engines, "engine_timings", timings)
    assert engines.resolve_engine("auto", (SPEC,), tmp_path, posters=engines.INT8_AFTER) == "openvino"
    kept = json.loads(next((tmp_path / "engines").glob("*.json")).read_text())
    assert kept["chosen"] == "openvino" and kept["timings"]["openvino-int8"]["posters_per_s"] == 199.0
    assert engines.resolve_engine("auto", (SPEC,), tmp_path, posters=10 ** 6) == "openvino"
    assert engines.resolve_engine("auto", (SPEC,), tmp_path, posters=1) == "openvino"
    assert calls == [["openvino", engines.INT8]]  # timed once


def test_a_fast_engine_that_drifts_is_not_chosen(monkeypatch, tmp_path, int8_here):
    timings, _ = _fake_timings({"openvino": 90.0, engines.INT8: 240.0, "onnx": 60.0}, unfaithful=(engines.INT8,))
    monkeypatch.setattr(engines, "engine_timings", timings)
    assert engines.choose_engine((SPEC,), tmp_path) == "openvino"


def test_a_small_job_times_nothing_and_int8_waits_for_its_models(monkeypatch, tmp_path, int8_here):
    timings, calls = _fake_timings({"openvino": 90.0, engines.INT8: 240.0, "onnx": 60.0})
    monkeypatch.setattr(engines, "engine_timings", timings)
    assert engines.resolve_engine("auto", (SPEC,), tmp_path, posters=10) == "openvino" and calls == []
    assert engines.resolve_engine("auto", (SPEC,), tmp_path, posters=engines.INT8_AFTER) == engines.INT8
    assert engines.resolve_engine("auto", (SPEC,), tmp_path, posters=10) == "openvino"  # the int8 models are not made


@pytest.mark.parametrize("content", ["{not json", '{"chosen": "torch; rm -rf /"}', '["openvino"]'])
def test_a_damaged_or_foreign_timing_file_is_timed_again(monkeypatch, tmp_path, int8_here, content):
    timings, calls = _fake_timings({"openvino": 90.0, engines.INT8: 80.0, "onnx": 60.0})
    monkeypatch.setattr(engines, "engine_timings", timings)
    path = tmp_path / "engines" / f"{engines.machine_key((SPEC,))}.json"
    path.parent.mkdir()
    path.write_text(content)
    assert engines.choose_engine((SPEC,), tmp_path, measure=False) is None
    assert engines.choose_engine((SPEC,), tmp_path) == "openvino" and len(calls) == 1
    assert json.loads(path.read_text())["chosen"] == "openvino"


def test_timing_a_machine_runs_each_engine_on_the_bundled_posters(tmp_path):
    found = engines.engine_timings((SPEC,), tmp_path, ["openvino", "onnx"])
    assert found["onnx"]["least_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert found["openvino"]["least_cosine"] > 0.99 and found["openvino"]["faithful"]
    assert all(t["posters_per_s"] > 0 for t in found.values())
