"""Poster text: the words printed on each poster (title, tagline, names), read by rapidocr's
ONNX models, which ship inside its wheel (nothing is downloaded), on OpenVINO in bf16 where the
CPU has it and on onnxruntime elsewhere (``ocr_engine``).

Cached like embeddings: by OCR settings and the hash of each image's bytes, each finished
batch written atomically with its SHA-256; a damaged chunk is ignored with a warning and
read again. A poster that cannot be read is skipped with its reason (``errors``), never
stops the batch. rapidocr is an optional extra (``pip install 'posterlens[text]'``);
``require_rapidocr`` says so in one line where it is missing.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from posterlens.data.images import PosterError, content_hash, decode, read_poster_bytes
from posterlens.errors import TextUnavailable
from posterlens.progress import progress as progress_bar

__all__ = ["OcrSettings", "PosterTexts", "TextCache", "TextUnavailable", "INSTALL_HINT", "ENGINES", "MODEL_FILES",
           "rapidocr_available", "require_rapidocr", "ocr_engine", "rapidocr_params", "ocr_reader", "poster_pixels",
           "ocr_workers", "read_texts"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'posterlens[text]'"


def rapidocr_available() -> bool:
    return importlib.util.find_spec("rapidocr") is not None


def require_rapidocr() -> None:
    """Raise ``TextUnavailable`` (one line: what to install) where rapidocr is missing."""
    if not rapidocr_available():
        raise TextUnavailable(f"--text reads poster text with rapidocr, which is not installed: {INSTALL_HINT}")


ENGINES = ("onnxruntime", "openvino")
MODEL_FILES = {"Det": "PP-OCRv6_det_small.onnx", "Rec": "PP-OCRv6_rec_small.onnx"}  # in rapidocr 3.10.0's wheel


def _model_dir() -> Path:
    return Path(importlib.util.find_spec("rapidocr").origin).parent / "models"


@functools.cache
def ocr_engine() -> str:
    """The runtime that reads posters on this machine: ``"openvino"`` where the CPU computes in bf16
    (AVX512-BF16 or AMX: OpenVINO then runs detection and recognition in bf16), else ``"onnxruntime"``.

    On the development posters, on a 2-core machine shared with another job (benchmarks/ocr_speed.py,
    docs/text.md): OpenVINO in bf16 took 0.70x onnxruntime's time (0.066-0.075 s against 0.095-0.106 s
    median a poster, two samples), finding 96% of its words (the other 4%: small print read
    differently) and the same catalogue title words, within a point. In f32 OpenVINO reads exactly
    onnxruntime's words, ~10% slower: onnxruntime stays the runtime there.
    """
    if not rapidocr_available() or not all((_model_dir() / f).is_file() for f in MODEL_FILES.values()):
        return "onnxruntime"
    try:
        import openvino

        bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception as err:  # noqa: BLE001  not installed, no CPU plugin: onnxruntime, which always works
        log.debug("OCR on onnxruntime: OpenVINO unavailable (%s)", err)
        return "onnxruntime"
    return "openvino" if bf16 else "onnxruntime"


@dataclass(frozen=True)
class OcrSettings:
    """How posters are read: detection at 320 px on the short side (rapidocr's default, 736 px with
    the direction classifier, costs ~5x more for about the same words; the poster's own size or
    less loses a third of them), no text-direction classifier, boxes under 0.7 confidence dropped
    (mostly the credit block), on one thread, with the runtime ``ocr_engine`` picks.

    Cost (benchmarks/ocr_speed.py, 100 and 200 development posters of 300x~445 px, one thread, a
    2-core machine shared with another job): 0.066-0.075 s median a poster on OpenVINO bf16,
    0.095-0.106 s on onnxruntime. ``key`` names the runtime where it is not onnxruntime: bf16 reads
    a few small words differently, so each runtime's texts are cached apart. The runtime is the
    machine's (like the embedding engine), not a setting a model saves."""

    det_side: int = 320
    box_thresh: float = 0.7
    max_side: int = 1024  # larger posters are downscaled first: detection resizes them anyway
    threads: int = 1

    @property
    def key(self) -> str:
        from importlib.metadata import version

        runtime = "" if ocr_engine() == "onnxruntime" else f"-{ocr_engine()}-bf16"
        return f"rapidocr{version('rapidocr')}-det{self.det_side}-box{self.box_thresh}-max{self.max_side}{runtime}"


Reader = Callable[[np.ndarray], str]


def rapidocr_params(settings: OcrSettings, engine: str | None = None) -> dict:
    """The ``RapidOCR(params=...)`` these settings mean on ``engine`` (default: ``ocr_engine()``).

    OpenVINO is given the ONNX files in rapidocr's wheel (left to itself, rapidocr would download
    its own OpenVINO models)."""
    engine = engine or ocr_engine()
    if engine not in ENGINES:
        raise ValueError(f"OCR engine {engine!r}: expected one of {ENGINES}")
    params = {
        "Global.log_level": "error", "Global.use_cls": False,
        "EngineConfig.onnxruntime.intra_op_num_threads": settings.threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        "Det.limit_side_len": settings.det_side, "Det.box_thresh": settings.box_thresh,
    }
    if engine == "openvino":
        from rapidocr import EngineType

        params["EngineConfig.openvino.inference_num_threads"] = settings.threads
        for part, name in MODEL_FILES.items():
            params.update({f"{part}.engine_type": EngineType.OPENVINO, f"{part}.model_path": str(_model_dir() / name)})
    return params


def ocr_reader(settings: OcrSettings, engine: str | None = None) -> Reader:
    """rapidocr on an RGB uint8 array -> the poster's words, in reading order, one string."""
    require_rapidocr()
    from rapidocr import RapidOCR

    ocr = RapidOCR(params=rapidocr_params(settings, engine))

    def read(rgb: np.ndarray) -> str:
        result = ocr(np.ascontiguousarray(rgb[:, :, ::-1]))  # rapidocr works in BGR, like cv2.imread
        return " ".join(result.txts or ())

    return read


def poster_pixels(path: str, data: bytes, max_side: int) -> np.ndarray:
    """The poster as RGB uint8 at its own size (at most ``max_side``), through ``images.decode``'s checks."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        width, height = Image.open(io.BytesIO(data)).size if data else (0, 0)
    except (UnidentifiedImageError, OSError):
        raise PosterError(path, "not an image (Pillow cannot identify it)") from None
    scale = min(1.0, max_side / max(width, height, 1))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(decode(path, data, size), dtype=np.uint8)


def _digest(keys: Sequence[str], texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([list(keys), list(texts)], ensure_ascii=False).encode()).hexdigest()


class TextCache:
    """OCR text of one ``OcrSettings``, as chunk files ``<root>/text/<settings key>/*.json``."""

    def __init__(self, root: Path, settings: OcrSettings):
        self.dir = Path(root) / "text" / settings.key
        self.dir.mkdir(parents=True, exist_ok=True)

    def _chunks(self) -> list[Path]:
        return sorted(self.dir.glob("*.json"))

    def load(self) -> dict[str, str]:
        """Every cached text by content key; a chunk that fails its checksum is ignored with a warning."""
        table: dict[str, str] = {}
        for chunk in self._chunks():
            try:
                body = json.loads(chunk.read_text(encoding="utf-8"))
                keys, texts = body["keys"], body["texts"]
                if len(keys) != len(texts) or body["sha256"] != _digest(keys, texts):
                    raise ValueError("checksum mismatch")
            except Exception as err:  # a damaged chunk only costs its own posters: they are read again
                log.warning("ignoring damaged text cache file %s (%s); its posters will be read again", chunk, err)
                continue
            table.update(zip(keys, texts))
        return table

    def add(self, keys: Sequence[str], texts: Sequence[str]) -> None:
        """Store texts atomically (a partial file never looks complete), with their checksum."""
        if not keys:
            return
        name = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tmp = self.dir / f".{name}.tmp"
        try:
            body = {"keys": list(keys), "texts": list(texts), "sha256": _digest(keys, texts)}
            tmp.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, self.dir / f"{name}.json")
        finally:
            tmp.unlink(missing_ok=True)


@dataclass
class PosterTexts:
    """OCR text for a list of poster files; ``None`` where the file could not be read."""

    paths: list[str]
    texts: list[str | None]
    keys: list[str | None] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # path -> reason
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> np.ndarray:
        return np.array([t is not None for t in self.texts], dtype=bool)


def _read_one(reader: Reader, path: str, data: bytes, settings: OcrSettings) -> tuple[str | None, str | None]:
    """(text, None), or (None, the reason) where this poster cannot be read: never raises."""
    try:
        return reader(poster_pixels(path, data, settings.max_side)), None
    except Exception as err:  # noqa: BLE001  a bad poster costs itself, never the batch
        return None, getattr(err, "reason", None) or f"cannot read its text ({type(err).__name__}: {err})"


_worker: tuple[Reader, OcrSettings] | None = None  # each OCR worker process's reader


def _start_worker(settings: OcrSettings) -> None:
    global _worker
    _worker = ocr_reader(settings), settings


def _read_in_worker(items: list[tuple[str, bytes]]) -> list[tuple[str | None, str | None]]:
    reader, settings = _worker
    return [_read_one(reader, path, data, settings) for path, data in items]


def ocr_workers() -> int:
    """Processes that read poster text in ``load_dataset``: one per core this process may use
    (each reads on ``OcrSettings.threads`` thread)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _results(todo: list[tuple[str, bytes]], settings: OcrSettings, reader: Reader | None, workers: int,
             batch_size: int):
    """Yield (index in ``todo``, (text, reason)) as posters are read: in this process, or with
    ``workers`` > 1 (and no ``reader`` given) in that many processes, ``batch_size`` posters a task."""
    if reader is not None or workers <= 1 or len(todo) <= batch_size:
        reader = reader or ocr_reader(settings)
        for i, (path, data) in enumerate(todo):
            yield i, _read_one(reader, path, data, settings)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _start_worker, (settings,)) as pool:
        tasks = {pool.submit(_read_in_worker, todo[s:s + batch_size]): s for s in range(0, len(todo), batch_size)}
        for task in as_completed(tasks):
            try:
                results = task.result()
            except Exception as err:  # noqa: BLE001  a worker that died costs its own posters, never the batch
                results = [(None, f"cannot read its text (the OCR process failed: {type(err).__name__})")] * len(
                    todo[tasks[task]:tasks[task] + batch_size])
            for offset, result in enumerate(results):
                yield tasks[task] + offset, result


def read_texts(paths: Sequence[str | Path], cache_dir: Path, settings: OcrSettings = OcrSettings(),
               reader: Reader | None = None, batch_size: int = 16, progress: bool = True,
               use_cache: bool = True, workers: int = 1, warn: bool = True) -> PosterTexts:
    """The text printed on each poster, from the cache where possible (OCR only for new images),
    in ``workers`` processes (``ocr_workers()``) where no ``reader`` is given.

    ``use_cache=False`` neither reads nor writes the cache (in-memory images, as for embeddings).
    ``warn=False`` leaves the "skipped" warnings to the caller (``PosterTexts.errors``)."""
    start = time.perf_counter()
    paths = [str(p) for p in paths]
    cache = TextCache(Path(cache_dir), settings) if use_cache else None
    known = cache.load() if cache else {}
    keys: list[str | None] = []
    errors: dict[str, str] = {}
    todo: dict[str, list[int]] = {}  # new images, each read once however many files hold it
    data: dict[str, bytes] = {}  # their bytes (only theirs: cached posters are only hashed)
    for i, path in enumerate(paths):
        try:
            raw = read_poster_bytes(path)
        except PosterError as err:
            keys.append(None)
            errors[path] = err.reason
            continue
        keys.append(content_hash(raw))
        if keys[-1] not in known:
            todo.setdefault(keys[-1], []).append(i)
            data.setdefault(keys[-1], raw)
    texts: list[str | None] = [known.get(k) if k else None for k in keys]
    cached = sum(t is not None for t in texts)
    if todo:
        new = list(todo)
        bar = progress_bar(len(new), "reading poster text", "poster", progress)
        done_keys, done_texts = [], []
        items = [(paths[todo[key][0]], data.pop(key)) for key in new]
        for n, (text, reason) in _results(items, settings, reader, workers, batch_size):
            rows = todo[new[n]]
            bar.update()
            if text is None:
                errors.update({paths[r]: reason for r in rows})
                continue
            for r in rows:
                texts[r] = text
            done_keys.append(new[n])
            done_texts.append(text)
            if len(done_keys) >= batch_size and cache:
                cache.add(done_keys, done_texts)
                done_keys, done_texts = [], []
        if cache:
            cache.add(done_keys, done_texts)
        bar.close()
    if warn:
        for path, reason in errors.items():
            log.warning("skipped %s: %s", path, reason)
    computed = sum(texts[rows[0]] is not None for rows in todo.values())
    return PosterTexts(paths, texts, keys, errors, computed, cached, time.perf_counter() - start)
