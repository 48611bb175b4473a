"""Embeddings: ONNX and torch agree, the cache computes each image once, failures are per file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from posterlens.data import images
from posterlens.features import embed as features
from posterlens.features import engines, int8, store
from posterlens.features.backbones import resolve

SPEC = resolve()


class Counting:
    """Wraps a runner and counts the posters it embeds; can fail after some batches."""

    def __init__(self, runner, fail_after: int | None = None):
        self.runner, self.fail_after, self.seen, self.batches = runner, fail_after, 0, 0

    def __call__(self, batch):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.batches += 1
        self.seen += len(batch)
        return self.runner(batch)


@pytest.fixture(scope="module")
def onnx(tmp_path_factory):
    return engines.make_runner(SPEC, tmp_path_factory.mktemp("onnx"), "onnx")


ENGINE_COSINE = 0.999  # the engines' embeddings of a poster agree to this cosine (bf16 OpenVINO included)


@pytest.mark.parametrize("engine", ["torch", "openvino"])  # openvino-int8: its own test below
def test_engines_give_the_same_features(posters, tmp_path, onnx, engine):
    a = features.embed_files(posters[:4], SPEC, tmp_path / "a", runner=onnx, progress=False)
    b = features.embed_files(posters[:4], SPEC, tmp_path / "b", engine=engine, progress=False)
    assert a.features.shape == b.features.shape == (4, SPEC.feature_dim)
    cosine = (a.features * b.features).sum(1) / np.linalg.norm(a.features, axis=1) / np.linalg.norm(b.features, axis=1)
    assert (cosine > ENGINE_COSINE).all()
    assert np.abs(a.features - b.features).max() < 0.05 * np.abs(a.features).max()


# the fast decode (simplejpeg + OpenCV) against Pillow's, the same network: on the 4,722 development posters
# lite0's cosine was min 0.985, median 0.9987 (docs/features.md, "The whole cold embed, faster")
DECODE_COSINE = 0.98


def test_the_fast_decode_keeps_embeddings_within_tolerance(posters, tmp_path, onnx, monkeypatch):
    fast = features.embed_files(posters, SPEC, tmp_path / "fast", runner=onnx, progress=False)
    monkeypatch.setattr(images, "FAST_SHRINK", 0.0)  # every poster through Pillow, as before
    pillow = features.embed_files(posters, SPEC, tmp_path / "pillow", runner=onnx, progress=False)
    cosine = (fast.features * pillow.features).sum(1) / np.linalg.norm(fast.features, axis=1) / np.linalg.norm(pillow.features, axis=1)
    assert (cosine > DECODE_COSINE).all() and (cosine < 1 - 1e-6).all()  # every sample poster took the fast path


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory):
    """A cache holding lite0's int8 model, quantized once for these tests."""
    cache = tmp_path_factory.mktemp("int8")
    int8.int8_file(SPEC, cache)
    return cache


# int8 embeddings drift a little poster by poster: on the 4,722 development posters their cosine
# with f32 was min 0.971, median 0.998 (docs/features.md)
INT8_COSINE, INT8_MEDIAN_COSINE = 0.95, 0.99


def test_int8_engine_is_faithful_and_cached_apart(posters, int8_cache, onnx):
    f32 = features.embed_files(posters[:6], SPEC, int8_cache, runner=onnx, engine="onnx", progress=False)
    quantized = features.embed_files(posters[:6], SPEC, int8_cache, engine=engines.INT8, progress=False)
    cosine = (f32.features * quantized.features).sum(1) / np.linalg.norm(f32.features, axis=1) / np.linalg.norm(quantized.features, axis=1)
    assert (cosine > INT8_COSINE).all() and np.median(cosine) > INT8_MEDIAN_COSINE and (cosine < 1 - 1e-6).any()
    assert quantized.computed == 6  # the f32 embeddings in the same cache were not taken for int8 ones
    for folder in (SPEC.key, f"{SPEC.key}-{int8.RECIPE}"):
        assert len(list((int8_cache / "features" / folder).glob("*.safetensors"))) == 1
    again = features.embed_files(posters[:6], SPEC, int8_cache, engine=engines.INT8, progress=False)
    assert again.cached == 6 and np.array_equal(again.features, quantized.features)


def test_auto_engine_picks_int8_only_where_it_pays(monkeypatch, tmp_path, int8_cache):
    monkeypatch.setattr(engines, "int8_available", lambda: True)
    monkeypatch.setattr(engines, "choose_engine", lambda *args, measure=True: engines.INT8 if measure else None)
    assert engines.resolve_engine("auto", (SPEC,), tmp_path, posters=10) == "openvino"  # quantizing costs more
    assert engines.resolve_engine("auto", (SPEC,), tmp_path, posters=engines.INT8_AFTER) == engines.INT8
    assert engines.resolve_engine("auto", (SPEC,), int8_cache, posters=1) == engines.INT8  # made already
    assert engines.resolve_engine("auto", (SPEC, LITE2), int8_cache, posters=1) == "openvino"  # lite2's is not
    monkeypatch.setattr(engines, "int8_available", lambda: False)
    assert engines.resolve_engine("auto", (SPEC,), int8_cache, posters=10**6) == "openvino"
    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    assert engines.resolve_engine("auto") == "onnx"
    assert engines.resolve_engine("torch", (SPEC,), int8_cache) == "torch"  # named engines are kept
    with pytest.raises(ValueError, match="unknown engine 'bogus'"):
        engines.resolve_engine("bogus")


def test_int8_needs_a_cpu_with_int8_dot_products(monkeypatch):
    monkeypatch.setattr(engines, "_cpu_flags", lambda: {"sse4_2", "avx2", "avx512f"})
    assert not engines.int8_available()
    monkeypatch.setattr(engines, "_cpu_flags", lambda: {"avx2", "avx_vnni"})
    assert engines.int8_available()


def test_int8_without_nncf_or_calibration_posters_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "nncf", None)  # as if not installed
    with pytest.raises(engines.EngineError, match="nncf, which is not installed"):
        int8.quantize_int8(SPEC, tmp_path)
    monkeypatch.setattr(int8, "CALIBRATION_DIR", tmp_path / "nowhere")
    with pytest.raises(engines.EngineError, match="bundled sample posters, not found"):
        int8.calibration_pixels(SPEC)


def test_a_damaged_int8_model_is_made_again(int8_cache, tmp_path, posters, caplog):
    shutil.copytree(int8_cache / "openvino", tmp_path / "openvino")
    shutil.copytree(int8_cache / "onnx", tmp_path / "onnx")
    [weights] = (tmp_path / "openvino").rglob("model.bin")
    weights.write_bytes(weights.read_bytes()[:1000])
    batch = np.zeros((1, SPEC.height, SPEC.width, 3), np.uint8)
    runner = engines.OpenVINORunner(SPEC, tmp_path, int8=True)
    assert "is damaged" in caplog.text and runner(batch).shape == (1, SPEC.feature_dim)
    assert weights.stat().st_size > 1000


def test_nncf_is_imported_with_its_telemetry_off(tmp_path):
    import os
    import subprocess
    import sys

    code = ("import os; from posterlens.features import int8; int8._import_nncf(); "
            "from nncf.telemetry import wrapper; "
            "print(isinstance(wrapper.telemetry, wrapper.NNCFTelemetry), os.environ.get('NNCF_CI'))")
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("NNCF_CI", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "None"]  # a stub, not the real sender; the host's environment as it was
    assert not (tmp_path / "intel").exists()  # no telemetry consent or client-id files written


def test_cache_chunks_that_fail_their_checks_are_recomputed(posters, tmp_path, onnx, caplog):
    features.embed_files(posters[:3], SPEC, tmp_path, runner=onnx, progress=False)
    [chunk] = (tmp_path / "features" / SPEC.key).glob("*.safetensors")
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(chunk), framework="numpy") as f:
        meta = f.metadata()
    vectors = load_file(str(chunk))["features"]
    vectors[1, 5] = np.nan  # a NaN with the old checksum, then a NaN with a matching one
    save_file({"features": vectors}, str(chunk), metadata=meta)
    counting = Counting(onnx)
    result = features.embed_files(posters[:3], SPEC, tmp_path, runner=counting, progress=False)
    assert counting.seen == 3 and result.ok.all() and "checksum mismatch" in caplog.text
    for chunk in (tmp_path / "features" / SPEC.key).glob("*.safetensors"):
        chunk.unlink()
    store.FeatureCache(tmp_path, SPEC).add(["k1"], np.full((1, SPEC.feature_dim), np.nan, np.float32))
    assert store.FeatureCache(tmp_path, SPEC).get(["k1"]) == {} and "NaN or infinite" in caplog.text
    with pytest.raises(ValueError, match=r"expected \(2, "):
        store.FeatureCache(tmp_path, SPEC).add(["k2", "k3"], np.zeros((2, 7), np.float32))


def test_rerun_computes_nothing_and_a_new_poster_computes_one(posters, tmp_path, onnx):
    first = Counting(onnx)
    cold = features.embed_files(posters[:6], SPEC, tmp_path, runner=first, batch_size=4, progress=False)
    assert first.seen == 6 and cold.computed == 6 and cold.cached == 0
    again = Counting(onnx)
    warm = features.embed_files(posters[:6], SPEC, tmp_path, runner=again, progress=False)
    assert again.seen == 0 and warm.cached == 6
    assert np.array_equal(warm.features, cold.features)
    more = Counting(onnx)
    grown = features.embed_files(posters[:7], SPEC, tmp_path, runner=more, progress=False)
    assert more.seen == 1 and grown.computed == 1 and grown.cached == 6


def test_cache_is_keyed_by_content_not_name(posters, tmp_path, onnx):
    features.embed_files(posters[:1], SPEC, tmp_path, runner=onnx, progress=False)
    renamed = tmp_path / "renamed.jpg"
    shutil.copy(posters[0], renamed)
    counting = Counting(onnx)
    result = features.embed_files([renamed], SPEC, tmp_path, runner=counting, progress=False)
    assert counting.seen == 0 and result.cached == 1


def test_interrupted_run_keeps_finished_batches(posters, tmp_path, onnx):
    with pytest.raises(KeyboardInterrupt):
        features.embed_files(posters, SPEC, tmp_path, runner=Counting(onnx, fail_after=2), batch_size=3, progress=False)
    resumed = Counting(onnx)
    result = features.embed_files(posters, SPEC, tmp_path, runner=resumed, batch_size=3, progress=False)
    assert result.cached == 6 and resumed.seen == 4
    assert not list((tmp_path / "features").rglob("*.tmp"))


def test_bad_files_do_not_stop_the_batch(posters, tmp_path, onnx):
    (tmp_path / "text.jpg").write_text("not a poster")
    (tmp_path / "empty.jpg").write_bytes(b"")
    files = [posters[0], tmp_path / "text.jpg", posters[1], tmp_path / "empty.jpg", tmp_path / "gone.jpg"]
    result = features.embed_files(files, SPEC, tmp_path, runner=onnx, progress=False)
    assert list(result.ok) == [True, False, True, False, False]
    assert set(result.errors) == {str(f) for f in files[1:2] + files[3:]}
    assert "not an image" in result.errors[str(tmp_path / "text.jpg")]


def test_damaged_cache_chunk_is_ignored(posters, tmp_path, onnx):
    features.embed_files(posters[:2], SPEC, tmp_path, runner=onnx, progress=False)
    for chunk in (tmp_path / "features").rglob("*.safetensors"):
        chunk.write_bytes(b"garbage")
    counting = Counting(onnx)
    features.embed_files(posters[:2], SPEC, tmp_path, runner=counting, progress=False)
    assert counting.seen == 2


def test_compaction_merges_chunks(posters, tmp_path, onnx, monkeypatch):
    monkeypatch.setattr(store, "COMPACT_AFTER", 2)
    result = features.embed_files(posters, SPEC, tmp_path, runner=onnx, batch_size=2, progress=False)
    chunks = list((tmp_path / "features").rglob("*.safetensors"))
    assert len(chunks) == 1
    again = features.embed_files(posters, SPEC, tmp_path, runner=Counting(onnx), progress=False)
    assert np.array_equal(again.features, result.features)


def test_openvino_parallel_requests_equal_one_request(tmp_path):
    runner = engines.OpenVINORunner(SPEC, tmp_path, threads=2)
    batch = np.random.default_rng(0).integers(0, 256, (5, SPEC.height, SPEC.width, 3), dtype=np.uint8)
    together = runner(batch)  # 5 >= 2 * 2 threads: split over 2 requests at once
    one_by_one = np.concatenate([runner(batch[i:i + 1]) for i in range(5)])
    assert runner.parallel is not None and together.shape == (5, SPEC.feature_dim)
    np.testing.assert_allclose(together, one_by_one, rtol=1e-4, atol=1e-4)


LITE2 = resolve("efficientnet_lite2")


class Recording:
    """A stand-in network: keeps the pixels it is given, returns a summary of each poster as its features."""

    def __init__(self, backbone):
        self.backbone, self.batches = backbone, []

    @property
    def seen(self) -> int:
        return sum(len(batch) for batch in self.batches)

    def __call__(self, batch):
        assert batch.shape[1:] == (self.backbone.height, self.backbone.width, 3) and batch.dtype == np.uint8
        self.batches.append(batch.copy())
        return np.repeat(batch.mean(axis=(1, 2, 3), dtype=np.float32)[:, None], self.backbone.feature_dim, axis=1)


def test_two_backbones_read_hash_and_decode_each_poster_once(posters, tmp_path, monkeypatch):
    hashed, decoded = [], []
    content_hash, decode_sizes = features.content_hash, features.decode_sizes
    monkeypatch.setattr(features, "content_hash", lambda data: hashed.append(data) or content_hash(data))
    monkeypatch.setattr(features, "decode_sizes", lambda path, data, sizes: decoded.append((path, sizes))
                        or decode_sizes(path, data, sizes))
    spec = features.FeatureSpec((SPEC, LITE2))
    runners = [Recording(SPEC), Recording(LITE2)]
    result = features.embed(posters + posters[:2], spec, tmp_path, runners=runners, batch_size=4, progress=False)
    assert len(hashed) == len(posters) + 2  # once a file (the two repeated files are listed twice)
    assert sorted(path for path, _ in decoded) == sorted(map(str, posters))  # once a distinct image
    assert all(sizes == [(SPEC.width, SPEC.height), (LITE2.width, LITE2.height)] for _, sizes in decoded)
    assert [r.seen for r in runners] == [len(posters), len(posters)]
    assert result.ok.all() and result.features.shape == (len(posters) + 2, spec.feature_dim)
    assert result.computed == len(posters) and result.cached == 0
    np.testing.assert_array_equal(result.features[-2:], result.features[:2])


def test_a_backbone_added_to_a_cached_one_runs_alone(posters, tmp_path):
    alone = features.embed_files(posters, SPEC, tmp_path, runner=Recording(SPEC), progress=False)
    spec = features.FeatureSpec((SPEC, LITE2))
    runners = [Recording(SPEC), Recording(LITE2)]
    both = features.embed(posters, spec, tmp_path, runners=runners, progress=False)
    assert [r.seen for r in runners] == [0, len(posters)]
    assert both.ok.all() and both.computed == len(posters) and both.cached == 0
    np.testing.assert_array_equal(both.features[:, :SPEC.feature_dim], alone.features)
    again = [Recording(SPEC), Recording(LITE2)]
    warm = features.embed(posters, spec, tmp_path, runners=again, progress=False)
    assert [r.seen for r in again] == [0, 0] and warm.cached == len(posters) and warm.computed == 0
    np.testing.assert_array_equal(warm.features, both.features)


def test_a_backbone_gets_the_same_pixels_alone_or_with_another(tmp_path):
    """A large JPEG is drafted (decoded at a reduced scale) the same way whichever backbones ask for it."""
    y, x = np.mgrid[0:2900, 0:1950]
    noise = np.random.default_rng(0).integers(0, 60, (2900, 1950, 3))
    pixels = np.stack([x % 256, y % 256, (x * y) % 256], axis=-1) // 2 + noise
    poster = tmp_path / "large.jpg"
    from PIL import Image

    Image.fromarray(pixels.astype(np.uint8)).save(poster, quality=90)
    alone = Recording(SPEC)
    features.embed([poster], features.FeatureSpec((SPEC,)), tmp_path / "alone", runners=[alone], progress=False)
    together = [Recording(SPEC), Recording(LITE2)]
    features.embed([poster], features.FeatureSpec((LITE2, SPEC)), tmp_path / "together", runners=together[::-1],
                   progress=False)
    np.testing.assert_array_equal(together[0].batches[0], alone.batches[0])
    from posterlens.data.images import decode, read_poster_bytes

    np.testing.assert_array_equal(np.asarray(decode(poster, read_poster_bytes(poster), (SPEC.width, SPEC.height))),
                                  alone.batches[0][0])
