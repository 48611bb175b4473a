"""Poster embeddings with a pretrained backbone, cached on disk.

The cache is keyed by backbone and by the hash of each image's bytes, so a re-run only
reads and hashes files, and adding posters only computes the new ones. Each computed
batch is written as its own small safetensors file (temporary name, then rename), so an
interrupted run loses nothing it had finished.

Engines run the same network, exported once to ONNX with a uint8 input that is normalised
inside the graph: OpenVINO in int8 (quantized once by NNCF on the bundled sample posters),
OpenVINO in its default precision, ONNX Runtime (the fallback) and torch; ``resolve_engine``
says which ``auto`` picks. Int8 embeddings are cached apart from the others (they drift a
little poster by poster). Images are decoded in worker threads while the network runs.

A ``FeatureSpec`` is the embedding a model uses: one or more backbones, concatenated in
order, each cached on its own (adding a backbone reuses the others' cache). Each poster
is read, hashed and decoded once for all of them, then resized to each one's input.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from posterlens.backbones import Backbone, create_model
from posterlens.images import SAMPLE_DIR, PosterError, content_hash, decode, decode_sizes, read_poster_bytes

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]
COMPACT_AFTER = 64  # merge the cache's chunk files when there are more than this


def default_cache_dir() -> Path:
    """``$POSTERLENS_CACHE`` or ``~/.cache/posterlens``."""
    return Path(os.environ.get("POSTERLENS_CACHE", Path.home() / ".cache" / "posterlens"))


@dataclass
class Embeddings:
    """Features for a list of poster files; rows of files that failed are NaN."""

    paths: list[str]
    features: np.ndarray
    keys: list[str | None] = field(default_factory=list)  # content hash of each file
    errors: dict[str, str] = field(default_factory=dict)  # path -> reason
    computed: int = 0  # distinct images embedded by at least one backbone in this call
    cached: int = 0  # rows whose whole embedding came from the cache
    seconds: float = 0.0

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the rows that hold a real embedding."""
        return ~np.isnan(self.features).any(axis=1)


@dataclass(frozen=True)
class FeatureSpec:
    """The embedding of a model: its backbones' features, concatenated in this order."""

    backbones: tuple[Backbone, ...]

    @property
    def feature_dim(self) -> int:
        return sum(b.feature_dim for b in self.backbones)

    @property
    def name(self) -> str:
        return "+".join(b.name for b in self.backbones)


def _digest(keys: Sequence[str], vectors: np.ndarray) -> str:
    """SHA-256 of a chunk's keys and vectors."""
    import hashlib

    digest = hashlib.sha256(",".join(keys).encode())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Embeddings of one backbone, stored as chunk files ``<dir>/<backbone key>/*.safetensors``
    (``<backbone key>-int8`` for the int8 engine's)."""

    def __init__(self, root: Path, backbone: Backbone, int8: bool = False):
        self.dir = Path(root) / "features" / (backbone.key + ("-int8" if int8 else ""))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dim = backbone.feature_dim

    def _chunks(self) -> list[Path]:
        return sorted(self.dir.glob("*.safetensors"))

    def load(self) -> dict[str, np.ndarray]:
        """Every cached embedding, by content key; a chunk that fails ``_check`` is ignored with a warning."""
        from safetensors import safe_open

        table: dict[str, np.ndarray] = {}
        for chunk in self._chunks():
            try:
                with safe_open(str(chunk), framework="numpy") as f:
                    meta, vectors = f.metadata() or {}, f.get_tensor("features")
                keys = self._check(meta, vectors)
            except Exception as err:  # a damaged chunk only costs its own embeddings: they are recomputed
                log.warning("ignoring damaged cache file %s (%s); its posters will be embedded again", chunk, err)
                continue
            table.update(zip(keys, vectors))
        return table

    def _check(self, meta: dict, vectors: np.ndarray) -> list[str]:
        """The chunk's keys, after checking its checksum, shape and values."""
        keys = meta["keys"].split(",")
        if vectors.shape != (len(keys), self.dim) or vectors.dtype != np.float32:
            raise ValueError(f"shape {vectors.shape} {vectors.dtype}, expected ({len(keys)}, {self.dim}) float32")
        if meta.get("sha256") != _digest(keys, vectors):
            raise ValueError("checksum mismatch")
        if not np.isfinite(vectors).all():
            raise ValueError("NaN or infinite values")
        return keys

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store embeddings atomically (a partial file never looks complete), with their checksum."""
        from safetensors.numpy import save_file

        if not keys:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        name = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tmp = self.dir / f".{name}.tmp"
        try:
            save_file({"features": vectors}, str(tmp), metadata={"keys": ",".join(keys), "sha256": _digest(keys, vectors)})
            os.replace(tmp, self.dir / f"{name}.safetensors")
        finally:
            tmp.unlink(missing_ok=True)

    def compact(self) -> None:
        """Merge chunk files into one when there are many."""
        chunks = self._chunks()
        if len(chunks) <= COMPACT_AFTER:
            return
        table = self.load()
        self.add(list(table), np.stack(list(table.values())))
        for chunk in chunks:
            chunk.unlink(missing_ok=True)


class NoCache:
    """Stands in for ``FeatureCache`` when embeddings should not be stored (one-off predictions)."""

    def load(self) -> dict[str, np.ndarray]:
        return {}

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        pass

    def compact(self) -> None:
        pass


INT8 = "openvino-int8"
ENGINES = ("auto", INT8, "openvino", "onnx", "torch")
EXPORT_VERSION = "u8v1"  # the exported graph takes uint8 NHWC pixels and normalises inside
BATCH_SIZES = {INT8: 32}  # posters a forward pass, by engine; others: 8 (ONNX Runtime's memory grows with it)
INT8_AFTER = 1000  # auto makes the int8 models (~25 s for lite0 + lite2, once per cache) only for jobs this large
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products: where int8 pays
CALIBRATION_DIR = SAMPLE_DIR / "images"  # NNCF calibrates the int8 models on these posters' activations
CALIBRATION_POSTERS = 64  # the first ones by name: as faithful as all 240 here, 2x faster to quantize


class EngineError(RuntimeError):
    """An engine that was asked for cannot run here; the message says what to install or use."""


def _normalised(backbone: Backbone):
    """The feature extractor behind a uint8 (N, H, W, 3) input, for every engine.

    Normalising inside the graph costs about 0.2 ms a poster instead of 1.25 ms in numpy,
    and a uint8 batch is a quarter of the size of a float one.
    """
    import torch
    from torch import nn

    class Normalised(nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net
            std = torch.tensor(backbone.std).view(1, 3, 1, 1)
            self.register_buffer("scale", 1.0 / (255.0 * std))
            self.register_buffer("shift", torch.tensor(backbone.mean).view(1, 3, 1, 1) / std)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2).float()
            return self.net(x * self.scale - self.shift)

    return Normalised(create_model(backbone)).eval()


def export_onnx(backbone: Backbone, path: Path) -> None:
    """Export the uint8-input feature extractor to ONNX (batch dimension dynamic), atomically."""
    import warnings

    import torch

    model = _normalised(backbone)
    example = torch.zeros(1, backbone.height, backbone.width, 3, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), input_names=["pixels"], output_names=["features"],
                              dynamic_axes={"pixels": {0: "batch"}}, opset_version=17, dynamo=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def onnx_file(backbone: Backbone, cache_dir: Path) -> Path:
    """The backbone's ONNX export in the cache, made on first use."""
    path = Path(cache_dir) / "onnx" / f"{backbone.key}.{EXPORT_VERSION}.onnx"
    if not path.exists():
        export_onnx(backbone, path)
    return path


def onnx_runner(backbone: Backbone, cache_dir: Path, threads: int | None = None) -> Runner:
    """ONNX Runtime session on the exported backbone."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_file(backbone, cache_dir)), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"pixels": batch})[0]


# --- int8 ---------------------------------------------------------------------------------------

def int8_dir(backbone: Backbone, cache_dir: Path) -> Path:
    """Where the backbone's int8 model lives in the cache (``model.xml`` + ``model.bin``)."""
    return Path(cache_dir) / "openvino" / f"{backbone.key}.{EXPORT_VERSION}.int8-{CALIBRATION_POSTERS}"


def _import_nncf():
    """nncf, with its usage telemetry off and its log and progress bars at warnings only.

    Left alone, importing nncf writes a client id under ``~/intel`` and its calls report to Google
    Analytics. While it is imported, ``openvino_telemetry`` is made unimportable (nncf then falls
    back to its stub) and ``NNCF_CI`` is set (its own switch, for a host that imported the
    telemetry package already); both are put back afterwards.
    """
    import sys

    saved_env, saved_module = os.environ.get("NNCF_CI"), sys.modules.get("openvino_telemetry", ...)
    os.environ["NNCF_CI"] = "1"
    if saved_module is ...:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import fails: nncf uses its stub
    try:
        import nncf
    except ImportError as err:
        raise EngineError(f"engine {INT8!r} quantizes with nncf, which is not installed: run `make setup`, "
                          "or use --engine openvino") from err
    finally:
        if saved_env is None:
            os.environ.pop("NNCF_CI", None)
        else:
            os.environ["NNCF_CI"] = saved_env
        if saved_module is ...:
            sys.modules.pop("openvino_telemetry", None)
    nncf.set_log_level(logging.WARNING)
    return nncf


def calibration_pixels(backbone: Backbone) -> np.ndarray:
    """The first ``CALIBRATION_POSTERS`` of ``CALIBRATION_DIR`` by name, uint8 at the backbone's input size."""
    files = sorted(p for p in CALIBRATION_DIR.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(files) < CALIBRATION_POSTERS:
        raise EngineError(f"engine {INT8!r} calibrates on the bundled sample posters, not found in "
                          f"{CALIBRATION_DIR} (run from a clone of the repository, or use --engine openvino)")
    size = (backbone.width, backbone.height)
    return np.stack([np.asarray(decode(p, read_poster_bytes(p), size), dtype=np.uint8)
                     for p in files[:CALIBRATION_POSTERS]])


def quantize_int8(backbone: Backbone, cache_dir: Path) -> Path:
    """Make the backbone's int8 model: NNCF post-training quantization (preset PERFORMANCE, fast
    bias correction) of the ONNX export, calibrated on ``calibration_pixels``; saved to
    ``int8_dir`` as a whole (a folder renamed into place, so a half-written model never loads)."""
    import contextlib
    import io
    import shutil

    import openvino as ov
    from openvino.passes import ConstantFolding, Manager

    nncf = _import_nncf()
    log.info("making the int8 model of %s (once per cache)", backbone.name)
    model = ov.Core().read_model(str(onnx_file(backbone, cache_dir)))
    # fold the Reshape in front of each depthwise weight, so that its quantizer sits on a constant
    # and the CPU runs those convolutions in int8 (1.4x -> 2.2x over f32 for lite0 here)
    passes = Manager()
    passes.register_pass(ConstantFolding())
    passes.run_passes(model)
    pixels = calibration_pixels(backbone)
    with contextlib.redirect_stdout(io.StringIO()):  # nncf's progress bars, whatever its log level
        quantized = nncf.quantize(model, nncf.Dataset(range(len(pixels)), lambda i: pixels[i:i + 1]),
                                  preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(pixels))
    folder = int8_dir(backbone, cache_dir)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        ov.save_model(quantized, str(tmp / "model.xml"))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process made it meanwhile: theirs is the same model
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / "model.xml"


def int8_file(backbone: Backbone, cache_dir: Path) -> Path:
    """The backbone's int8 model in the cache, made on first use."""
    path = int8_dir(backbone, cache_dir) / "model.xml"
    return path if path.exists() else quantize_int8(backbone, cache_dir)


class OpenVINORunner:
    """OpenVINO on the exported backbone: its int8 model with ``int8``, else the ONNX export in the
    CPU plugin's default precision (bf16 where the CPU has native bf16, AMX or AVX512-BF16; f32
    elsewhere).

    Small batches run on one latency-tuned request with every thread; larger ones are split over
    one single-thread request a thread, run at once (throughput mode): 1.6-1.8x faster for a
    batch of 8-16 on 2 cores. Each mode is compiled on its first batch.
    """

    def __init__(self, backbone: Backbone, cache_dir: Path, threads: int | None = None, int8: bool = False):
        import openvino as ov

        self.core, self.backbone = ov.Core(), backbone
        self.threads = threads or (os.cpu_count() or 1)
        self.model = self._read(backbone, Path(cache_dir)) if int8 else self.core.read_model(str(onnx_file(backbone, cache_dir)))
        self.single = None  # latency mode's request
        self.parallel: list | None = None  # throughput mode's requests
        self.pool: ThreadPoolExecutor | None = None

    def _read(self, backbone: Backbone, cache_dir: Path):
        """The int8 model; one the cache holds damaged is made again."""
        import shutil

        path = int8_file(backbone, cache_dir)
        try:
            return self.core.read_model(str(path))
        except RuntimeError as err:
            log.warning("int8 model %s is damaged (%s); making it again", path.parent, str(err).splitlines()[0])
            shutil.rmtree(path.parent, ignore_errors=True)
            return self.core.read_model(str(quantize_int8(backbone, cache_dir)))

    def _compile(self, config: dict, requests: int) -> list:
        compiled = self.core.compile_model(self.model, "CPU", {"INFERENCE_NUM_THREADS": self.threads, **config})
        made = [compiled.create_infer_request() for _ in range(requests)]
        # one poster on this thread first: pybind11 sets up its numpy API on first use, and two
        # requests doing that at once in a fresh process can deadlock (pybind/pybind11#4877)
        made[0].infer({0: np.zeros((1, self.backbone.height, self.backbone.width, 3), np.uint8)})
        return made

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.threads < 2 or len(batch) < 2 * self.threads:
            if self.single is None:
                [self.single] = self._compile({"PERFORMANCE_HINT": "LATENCY"}, 1)
            return self.single.infer({0: batch})[0].copy()
        if self.parallel is None:
            self.parallel = self._compile({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.threads}, self.threads)
            self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="openvino")
        parts = np.array_split(batch, len(self.parallel))
        # synchronous infer() in threads (it releases the GIL); start_async()/wait() hung inside
        # Airflow's in-process task runner
        done = self.pool.map(lambda pair: pair[0].infer({0: pair[1]})[0].copy(), zip(self.parallel, parts))
        return np.concatenate(list(done))


def torch_runner(backbone: Backbone) -> Runner:
    """The backbone in torch: ``channels_last`` and ``inference_mode``."""
    import torch

    model = _normalised(backbone)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).float().numpy()

    return run


@functools.cache
def _installed(package: str) -> bool:
    """Whether ``package`` can be imported here (looked up once a process: ``resolve_engine`` runs
    on every prediction)."""
    import importlib.util

    return importlib.util.find_spec(package) is not None


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported here."""
    return _installed("openvino")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags, no int8 by default
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def int8_available() -> bool:
    """Whether ``auto`` may choose int8: openvino and nncf installed, a CPU with int8 dot products
    (``INT8_CPU_FLAGS``; elsewhere int8 is no faster than f32) and the calibration posters present."""
    return (openvino_available() and _installed("nncf") and bool(_cpu_flags() & set(INT8_CPU_FLAGS))
            and CALIBRATION_DIR.is_dir())


def resolve_engine(engine: str, backbones: Sequence[Backbone] = (), cache_dir: Path | None = None,
                   posters: int = 0) -> str:
    """The engine ``engine`` names; ``auto`` is the fastest one that pays for itself here:

    - ``openvino-int8`` where ``int8_available()`` and either the int8 models of ``backbones``
      are in ``cache_dir`` already or the job has ``INT8_AFTER`` posters or more (making them
      costs ~25 s once for lite0 + lite2);
    - else ``openvino`` where installed (2x ONNX Runtime on this CPU in f32);
    - else ``onnx``.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    if not openvino_available():
        return "onnx"
    made = bool(backbones) and cache_dir is not None and all(
        (int8_dir(b, cache_dir) / "model.xml").exists() for b in backbones)
    return INT8 if int8_available() and (made or posters >= INT8_AFTER) else "openvino"


def make_runner(backbone: Backbone, cache_dir: Path, engine: str = "auto") -> Runner:
    """The network that turns a uint8 batch (N, H, W, 3) into features (N, D)."""
    engine = resolve_engine(engine, (backbone,), cache_dir)
    if engine in ("openvino", INT8):
        return OpenVINORunner(backbone, cache_dir, int8=engine == INT8)
    if engine == "onnx":
        return onnx_runner(backbone, cache_dir)
    return torch_runner(backbone)


def _read_and_hash(paths: Sequence[str], suffix: str) -> tuple[list[str | None], dict[str, str]]:
    keys: list[str | None] = []
    errors: dict[str, str] = {}
    for path in paths:
        try:
            keys.append(content_hash(read_poster_bytes(path)) + suffix)
        except PosterError as err:
            keys.append(None)
            errors[path] = err.reason
    return keys, errors


Batch = list[tuple[int, tuple[bool, ...]]]  # (row, which backbones need it)


def _decode_batch(paths: Sequence[str], batch: Batch, spec: FeatureSpec,
                  mirror: bool) -> tuple[list[tuple[list[int], np.ndarray]], dict[int, str]]:
    """Decode each poster of a batch once, at the input size of each backbone that needs it.

    Returns, for each backbone, the rows it got pixels for and those pixels; and the rows
    that failed, with the reason.
    """
    from PIL import ImageOps

    rows: list[list[int]] = [[] for _ in spec.backbones]
    arrays: list[list[np.ndarray]] = [[] for _ in spec.backbones]
    errors: dict[int, str] = {}
    for row, needs in batch:
        wanted = [j for j, need in enumerate(needs) if need]
        sizes = [(spec.backbones[j].width, spec.backbones[j].height) for j in wanted]
        try:
            images = decode_sizes(paths[row], read_poster_bytes(paths[row]), sizes)
        except (PosterError, OSError) as err:
            errors[row] = getattr(err, "reason", str(err))
            continue
        for j, image in zip(wanted, images):
            rows[j].append(row)
            arrays[j].append(np.asarray(ImageOps.mirror(image) if mirror else image, dtype=np.uint8))
    pixels = [np.stack(a) if a else np.zeros((0, b.height, b.width, 3), np.uint8) for a, b in zip(arrays, spec.backbones)]
    return list(zip(rows, pixels)), errors


def _prefetched(batches: list[Batch], load: Callable[[Batch], tuple], depth: int = 2) -> Iterator[tuple]:
    """Yield ``load(batch)`` for each batch, decoding the next ones in threads meanwhile."""
    with ThreadPoolExecutor(max_workers=depth) as pool:
        queue: deque[tuple[Batch, Future]] = deque()
        for batch in batches:
            queue.append((batch, pool.submit(load, batch)))
            if len(queue) > depth:
                b, fut = queue.popleft()
                yield b, fut.result()
        while queue:
            b, fut = queue.popleft()
            yield b, fut.result()


def embed(
    paths: Sequence[str | Path],
    spec: FeatureSpec,
    cache_dir: Path,
    engine: str = "auto",
    batch_size: int | None = None,
    mirror: bool = False,
    progress: bool = True,
    runners: Sequence[Runner | None] | None = None,
    use_cache: bool = True,
) -> Embeddings:
    """Embed poster files with each backbone of ``spec``, side by side, reusing and filling each
    backbone's on-disk cache (unless ``use_cache`` is off); a poster failing is NaN in every column.
    ``engine`` is resolved once for the whole job (``resolve_engine``): it decides the cache too,
    and ``batch_size`` where not given (``BATCH_SIZES``: int8 runs 1.1x faster at 32 than at 8).

    Each file is read and hashed once; a poster missing from any backbone's cache is decoded
    once and resized to the input of each backbone that lacks it, and only those backbones run.
    ``runners`` (one per backbone) replace the networks ``engine`` would build.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    cache_dir = Path(cache_dir)
    paths = [str(p) for p in paths]
    backbones = spec.backbones
    engine = resolve_engine(engine, backbones, cache_dir, len(paths))
    batch_size = batch_size or BATCH_SIZES.get(engine, 8)
    caches = [FeatureCache(cache_dir, b, engine == INT8) if use_cache else NoCache() for b in backbones]
    keys, errors = _read_and_hash(paths, ":mirror" if mirror else "")
    known = [cache.load() for cache in caches]
    ends = np.cumsum([b.feature_dim for b in backbones])
    columns = [slice(end - b.feature_dim, end) for b, end in zip(backbones, ends)]
    features = np.full((len(paths), spec.feature_dim), np.nan, dtype=np.float32)
    todo: dict[str, list[int]] = {}  # identical images are computed once
    needs: dict[str, tuple[bool, ...]] = {}  # which backbones lack each image
    for i, key in enumerate(keys):
        if key is None:
            continue
        for table, cols in zip(known, columns):
            if key in table:
                features[i, cols] = table[key]
        needs[key] = tuple(key not in table for table in known)
        if any(needs[key]):
            todo.setdefault(key, []).append(i)
    cached = sum(key is not None and not any(needs[key]) for key in keys)
    # posters needing the same backbones side by side, so that each backbone gets full batches
    first = sorted(((rows[0], needs[key]) for key, rows in todo.items()), key=lambda item: item[1], reverse=True)
    if first:
        runners = list(runners or [None] * len(backbones))  # built only for the backbones that run
        for j, backbone in enumerate(backbones):
            if runners[j] is None and any(need[j] for _, need in first):
                runners[j] = make_runner(backbone, cache_dir, engine)
        batches = [first[i:i + batch_size] for i in range(0, len(first), batch_size)]
        bar = tqdm(total=len(first), desc=f"embedding ({spec.name})", unit="poster", disable=not progress)
        load = lambda batch: _decode_batch(paths, batch, spec, mirror)  # noqa: E731
        for batch, (decoded, failed) in _prefetched(batches, load):
            for row, reason in failed.items():
                features[todo[keys[row]]] = np.nan  # columns from the other backbones' caches too
                errors.update((paths[r], reason) for r in todo[keys[row]])
            for runner, cache, cols, (rows, pixels) in zip(runners, caches, columns, decoded):
                if rows:
                    vectors = runner(pixels)
                    cache.add([keys[r] for r in rows], vectors)
                    for r, v in zip(rows, vectors):
                        features[todo[keys[r]], cols] = v
            bar.update(len(batch))
        bar.close()
        for cache in caches:
            cache.compact()
    for path, reason in errors.items():
        log.warning("skipped %s: %s", path, reason)
    return Embeddings(paths, features, keys, errors, computed=sum(paths[i] not in errors for i, _ in first),
                      cached=cached, seconds=time.perf_counter() - start)


def embed_files(paths: Sequence[str | Path], backbone: Backbone, cache_dir: Path, runner: Runner | None = None,
                **options) -> Embeddings:
    """``embed`` with one backbone (``runner`` for it, or one built for ``options["engine"]``)."""
    return embed(paths, FeatureSpec((backbone,)), cache_dir, runners=[runner], **options)
