"""Engines: the same network, exported once to ONNX with a uint8 input normalised inside the
graph, run by OpenVINO in int8 (``features.int8``), OpenVINO in its default precision, ONNX
Runtime (the fallback) or torch. ``resolve_engine`` says which ``auto`` picks, and why.

Which engine is fastest depends on the CPU (int8 pays with VNNI; OpenVINO's bf16 on an
AVX512-BF16 CPU beat it), so ``auto`` times the candidates once per machine on posters that
ship with the package and keeps the verdict in the cache (``choose_engine``, like FFTW's
wisdom): the fastest whose embeddings stay within ``FAITHFUL`` of ONNX Runtime's f32 ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import queue
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from posterlens.errors import EngineError
from posterlens.features.backbones import Backbone
from posterlens.features.export import onnx_file, torch_module
from posterlens.features.int8 import CALIBRATION_DIR, INT8, int8_dir, int8_file, make_int8_models, quantize_int8

__all__ = ["Runner", "Pending", "INT8", "ENGINES", "BATCH_SIZES", "INT8_AFTER", "FAITHFUL", "EngineError", "machine_key",
           "engine_timings", "choose_engine",
           "onnx_runner", "OpenVINORunner", "torch_runner", "openvino_available", "int8_unavailable",
           "int8_available", "resolve_engine", "make_runner", "make_runners"]

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import numpy as np

Runner = Callable[["np.ndarray"], "np.ndarray"]  # a uint8 batch (N, H, W, 3) -> features (N, D)
ENGINES = ("auto", INT8, "openvino", "onnx", "torch")
BATCH_SIZES = {INT8: 32}  # posters a forward pass, by engine; others: 8 (ONNX Runtime's memory grows with it)
INT8_AFTER = 1000  # auto makes the int8 models (~25 s for lite0 + lite2, once per cache) only for jobs this large
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products: where int8 pays
# The least cosine similarity to ONNX Runtime's f32 embedding an engine may give a timing poster. Int8's
# least over the 4,722 development posters is 0.971 with CV genre figures equal to f32's (docs/features.md);
# bf16 OpenVINO gives 0.998 on the timing posters.
FAITHFUL = 0.95
TIMING_POSTERS = 32  # the bundled posters after the int8 calibration ones: what each engine is timed on
TIMING_ROUNDS = 3  # each engine's time is its best of this many rounds, interleaved with the others'
# OpenVINO's threads pinned to cores: not, so that the decoding threads may take either core (a cold embed of
# the development posters, 2 runs each, pinned / unpinned: wall 0.98x, i.e. no difference measured here)
PINNED = False

def onnx_runner(backbone: Backbone, cache_dir: Path, threads: int | None = None) -> Runner:
    """ONNX Runtime session on the exported backbone."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_file(backbone, cache_dir)), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"pixels": batch})[0]


class Pending:
    """A batch's features, computed in parts in a runner's threads: ``result()`` waits for them, in order."""

    def __init__(self, parts: Sequence[Future]):
        self.parts = parts

    @classmethod
    def ready(cls, features: np.ndarray) -> Pending:
        done: Future = Future()
        done.set_result(features)
        return cls([done])

    def finished(self) -> bool:
        """Whether every part is done, none with an error."""
        return all(part.done() and part.exception() is None for part in self.parts)

    def result(self) -> np.ndarray:
        import numpy as np

        return np.concatenate([part.result() for part in self.parts])


class OpenVINORunner:
    """OpenVINO on the exported backbone: its int8 model with ``int8``, else the ONNX export in the
    CPU plugin's default precision (bf16 where the CPU has native bf16, AMX or AVX512-BF16; f32
    elsewhere).

    Small batches run on one latency-tuned request with every thread; larger ones are split over
    one single-thread request a thread, run at once (throughput mode): 1.6-1.8x faster for a
    batch of 8-16 on 2 cores. Each mode is compiled on its first batch, throughput mode with the
    batch dimension fixed to that batch's share of a request (``part``: 1.08x faster than a
    dynamic one for int8 lite0 + lite2 here, the same features; a shorter share is padded).
    ``submit`` returns while the parts run, so that the caller decodes the next posters
    meanwhile; threads are not pinned to cores (``PINNED``), so that the decoding threads take
    whichever core a request leaves.
    """

    def __init__(self, backbone: Backbone, cache_dir: Path, threads: int | None = None, int8: bool = False):
        import openvino as ov

        self.core, self.backbone = ov.Core(), backbone
        self.threads = threads or (os.cpu_count() or 1)
        self.model = self._read(backbone, Path(cache_dir)) if int8 else self.core.read_model(str(onnx_file(backbone, cache_dir)))
        self.single = None  # latency mode's request
        self.parallel: queue.SimpleQueue | None = None  # throughput mode's idle requests
        self.part = 0  # posters a throughput-mode request takes
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

    def _compile(self, config: dict, requests: int, batch: int | None = None) -> list:
        """``requests`` requests on the model, its batch dimension fixed to ``batch`` where given."""
        model = self.model
        if batch is not None:
            model = model.clone()
            model.reshape({model.inputs[0]: [batch, self.backbone.height, self.backbone.width, 3]})
        settings = {"INFERENCE_NUM_THREADS": self.threads, "ENABLE_CPU_PINNING": PINNED, **config}
        compiled = self.core.compile_model(model, "CPU", settings)
        made = [compiled.create_infer_request() for _ in range(requests)]
        # one batch on this thread first: pybind11 sets up its numpy API on first use, and two
        # requests doing that at once in a fresh process can deadlock (pybind/pybind11#4877)
        import numpy as np

        made[0].infer({0: np.zeros((batch or 1, self.backbone.height, self.backbone.width, 3), np.uint8)})
        return made

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.submit(batch).result()

    def submit(self, batch: np.ndarray) -> Pending:
        """Start on ``batch``: a batch of ``2 * threads`` posters or more is split into ``part``s for the
        requests, which run in this runner's threads (synchronous ``infer()``, which releases the GIL:
        ``start_async()``/``wait()`` hung inside Airflow's in-process task runner); a smaller one runs now."""
        if self.threads < 2 or len(batch) < 2 * self.threads:
            if self.single is None:
                [self.single] = self._compile({"PERFORMANCE_HINT": "LATENCY"}, 1)
            return Pending.ready(self.single.infer({0: batch})[0].copy())
        if self.parallel is None:
            self.part = -(-len(batch) // self.threads)
            self.parallel = queue.SimpleQueue()
            for request in self._compile({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.threads},
                                         self.threads, self.part):
                self.parallel.put(request)
            self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="openvino")
        parts = [batch[i:i + self.part] for i in range(0, len(batch), self.part)]
        return Pending([self.pool.submit(self._infer, part) for part in parts])

    def _infer(self, part: np.ndarray) -> np.ndarray:
        """``part`` (padded to ``self.part`` posters) on an idle request (two runners' threads share the
        cores, not the requests)."""
        import numpy as np

        given = len(part)
        if given < self.part:
            part = np.concatenate([part, np.zeros((self.part - given, *part.shape[1:]), part.dtype)])
        request = self.parallel.get()
        try:
            return request.infer({0: part})[0][:given].copy()
        finally:
            self.parallel.put(request)


def torch_runner(backbone: Backbone) -> Runner:
    """The backbone in torch: ``channels_last`` and ``inference_mode``."""
    import torch

    model = torch_module(backbone)

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


def int8_unavailable() -> str | None:
    """Why ``auto`` may not choose int8 here, or None: it needs openvino and nncf installed, a CPU with
    int8 dot products (``INT8_CPU_FLAGS``; elsewhere int8 is no faster than f32) and the calibration
    posters that ship with the package."""
    if not openvino_available() or not _installed("nncf"):
        return "openvino and nncf are not both installed (pip install openvino nncf)"
    if not _cpu_flags() & set(INT8_CPU_FLAGS):
        return f"this CPU has none of {', '.join(INT8_CPU_FLAGS)} (int8 would be no faster than f32)"
    if not CALIBRATION_DIR.is_dir():
        return f"the calibration posters are missing ({CALIBRATION_DIR}): reinstall posterlens"
    return None


def int8_available() -> bool:
    """Whether ``auto`` may choose int8 (``int8_unavailable`` says why not)."""
    return int8_unavailable() is None


def resolve_engine(engine: str, backbones: Sequence[Backbone] = (), cache_dir: Path | None = None,
                   posters: int = 0) -> str:
    """The engine ``engine`` names; ``auto`` is the fastest one that pays for itself here:

    - ``openvino-int8`` where ``int8_available()`` and either the int8 models of ``backbones``
      are in ``cache_dir`` already or the job has ``INT8_AFTER`` posters or more (making them
      costs ~25 s once for lite0 + lite2);
    - else ``openvino`` where installed (2x ONNX Runtime on this CPU in f32);
    - else ``onnx``;
    and where this machine's engines were timed (``choose_engine``: on the first job of
    ``INT8_AFTER`` posters, which makes the int8 models anyway), the fastest faithful one.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    if not openvino_available():
        return "onnx"
    made = bool(backbones) and cache_dir is not None and all(
        (int8_dir(b, cache_dir) / "model.xml").exists() for b in backbones)
    measured = choose_engine(backbones, cache_dir, measure=False) if backbones and cache_dir else None
    if measured is not None and (measured != INT8 or made or posters >= INT8_AFTER):
        return measured
    if not made and posters < INT8_AFTER:
        return "openvino"
    if not int8_available():
        _say_once(f"--engine auto: not openvino-int8 because {int8_unavailable() or 'it is turned off'}; using openvino")
        return "openvino"
    return choose_engine(backbones, cache_dir) if backbones and cache_dir else INT8


@functools.cache
def _say_once(message: str) -> None:
    log.info(message)


def make_runner(backbone: Backbone, cache_dir: Path, engine: str = "auto") -> Runner:
    """The network that turns a uint8 batch (N, H, W, 3) into features (N, D); the one ``choose_engine``
    just timed, compiled and warm, where there is one."""
    engine = resolve_engine(engine, (backbone,), cache_dir)
    timed = _TIMED.pop((backbone.key, str(Path(cache_dir)), engine), None)
    if timed is not None:
        return timed
    if engine in ("openvino", INT8):
        return OpenVINORunner(backbone, cache_dir, int8=engine == INT8)
    if engine == "onnx":
        return onnx_runner(backbone, cache_dir)
    return torch_runner(backbone)


def make_runners(backbones: Sequence[Backbone], cache_dir: Path, engine: str = "auto") -> list[Runner]:
    """``make_runner`` for each backbone, the int8 models still to make made at once (``make_int8_models``)."""
    engine = resolve_engine(engine, backbones, cache_dir)
    if engine == INT8:
        make_int8_models(backbones, cache_dir)
    return [make_runner(backbone, cache_dir, engine) for backbone in backbones]


# --- which engine is fastest here: timed once per machine ---------------------------------------

def machine_key(backbones: Sequence[Backbone]) -> str:
    """What a timing holds for: the CPU (model name and flags), the engines' versions and the backbones."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "-"

    try:
        model = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    except OSError:
        model = ""
    parts = [model, " ".join(sorted(_cpu_flags())), str(os.cpu_count()), installed("openvino"), installed("onnxruntime"),
             *(b.key for b in backbones)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


# runners built by the last ``engine_timings``, by (backbone key, cache folder, engine): ``choose_engine``
# keeps the chosen engine's for ``make_runner`` to hand out once
_TIMED: dict[tuple[str, str, str], Runner] = {}


def _timing_pixels(backbone: Backbone):
    """``TIMING_POSTERS`` bundled posters after the int8 calibration ones, uint8 at the backbone's size."""
    import numpy as np

    from posterlens.data.images import decode, read_poster_bytes
    from posterlens.features.int8 import CALIBRATION_POSTERS

    files = sorted(p for p in CALIBRATION_DIR.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    files = files[CALIBRATION_POSTERS:CALIBRATION_POSTERS + TIMING_POSTERS] or files[:TIMING_POSTERS]
    size = (backbone.width, backbone.height)
    return np.stack([np.asarray(decode(p, read_poster_bytes(p), size), dtype=np.uint8) for p in files])


def _cosines(a, b):
    import numpy as np

    return (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def engine_timings(backbones: Sequence[Backbone], cache_dir: Path, candidates: Sequence[str]) -> dict[str, dict]:
    """Posters a second of each candidate engine over ``backbones`` at its batch size (``BATCH_SIZES``;
    best of ``TIMING_ROUNDS`` interleaved rounds, compiled and warmed first), and the least cosine
    similarity of its embeddings to ONNX Runtime's f32 ones on the same posters. The runners it built
    are kept in ``_TIMED`` (``choose_engine`` keeps those of the engine it picks)."""
    import numpy as np

    _TIMED.clear()
    pixels = [_timing_pixels(b) for b in backbones]
    reference = [onnx_runner(b, cache_dir)(p) for b, p in zip(backbones, pixels)]
    runners = {engine: make_runners(backbones, cache_dir, engine) for engine in candidates}
    best = {engine: float("inf") for engine in candidates}
    least = {}
    for engine, built in runners.items():  # compile and warm each engine's batch mode
        size = BATCH_SIZES.get(engine, 8)
        out = [np.concatenate([run(p[i:i + size]) for i in range(0, len(p), size)]) for run, p in zip(built, pixels)]
        least[engine] = float(min(_cosines(o, r).min() for o, r in zip(out, reference)))
    for _ in range(TIMING_ROUNDS):
        for engine, built in runners.items():
            size = BATCH_SIZES.get(engine, 8)
            start = time.perf_counter()
            for run, p in zip(built, pixels):
                for i in range(0, len(p), size):
                    run(p[i:i + size])
            best[engine] = min(best[engine], time.perf_counter() - start)
    _TIMED.update({(b.key, str(Path(cache_dir)), engine): run
                   for engine, built in runners.items() for b, run in zip(backbones, built)})
    n = len(pixels[0])
    return {engine: {"posters_per_s": round(n / best[engine], 1), "least_cosine": round(least[engine], 5),
                     "faithful": least[engine] >= FAITHFUL} for engine in candidates}


def choose_engine(backbones: Sequence[Backbone], cache_dir: Path, measure: bool = True) -> str | None:
    """The fastest faithful engine on this machine, from ``<cache>/engines/<machine_key>.json``; without
    one, timed now (``engine_timings`` of openvino, and openvino-int8 where ``int8_available``: ONNX
    Runtime is the fidelity reference, slower than OpenVINO's f32 on every CPU measured) and written
    there, unless ``measure`` is off (then None)."""
    path = Path(cache_dir) / "engines" / f"{machine_key(backbones)}.json"
    try:
        chosen = json.loads(path.read_text())["chosen"]
        if chosen in ("openvino", "onnx") or (chosen == INT8 and int8_available()):
            return chosen
        raise ValueError(f"not an engine this machine may use: {chosen!r}")
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or a damaged or foreign file: time again
        if not measure:
            return None
    candidates = ["openvino", *([INT8] if int8_available() else [])]
    timings = engine_timings(backbones, cache_dir, candidates)
    faithful = [e for e in candidates if timings[e]["faithful"]] or ["onnx"]
    chosen = max(faithful, key=lambda e: timings[e]["posters_per_s"])
    for key in [key for key in _TIMED if key[2] != chosen]:  # the job that asked runs the chosen engine
        del _TIMED[key]
    log.info("--engine auto: timed here (%s): %s; using %s", path.name,
             ", ".join(f"{e} {t['posters_per_s']}/s" for e, t in timings.items()), chosen)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"chosen": chosen, "timings": timings}, indent=2))
        os.replace(tmp, path)
    except OSError as err:  # a read-only cache: timed again next time
        log.warning("cannot keep the engine timings in %s (%s)", path.parent, err)
    return chosen
