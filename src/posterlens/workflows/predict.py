"""Predictions and similar movies: the one code path behind the CLI, the DAG and the API.

    >>> import posterlens
    >>> predictor = posterlens.load()                # the released model, or load("runs/model")
    >>> predictor.predict("poster.jpg")              # DataFrame: file, genres, score (+ interval), trust, a column a genre
    >>> predictor.similar("poster.jpg", k=10)        # DataFrame: id, title, genres, score, similarity, poster

``predict`` takes one image or a list: file paths, PIL images, encoded bytes or HxWx3 uint8
arrays. Images that cannot be read are left out of the table and listed in
``table.attrs["errors"]`` (``file,reason``).

Every row says how far to trust it (``models.trust``): ``score_low``/``score_high`` (a
conformal interval at ``interval``, 0.8 by default), ``genre_confidence`` (the expected F1 of
its genres), ``domain_score`` and ``in_domain`` (False: it does not look like the training
posters). A model trained before them gives NaN there.

The CSV files the CLI and the DAG write from its table are ``app.outputs``'.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import pandas as pd
from PIL import Image

from posterlens.data.images import PosterError
from posterlens.errors import ModelError
from posterlens.features.backbones import Backbone
from posterlens.features.embed import Embeddings, embed
from posterlens.features.engines import Runner, make_runner, resolve_engine
from posterlens.features.store import default_cache_dir
from posterlens.models import directory as model_files
from posterlens.models.similar import SimilarIndex
from posterlens.models.trust import DOMAIN_SHARE, INTERVAL, INTERVAL_RULE
from posterlens.paths import RELEASED_DIR
from posterlens.settings import check_value

__all__ = ["Predictor", "Poster", "ImageInput", "load", "released_model_dir", "model_dir_or_released", "ERROR_COLUMNS",
           "TRUST_COLUMNS"]

log = logging.getLogger(__name__)

ImageInput = Union[str, Path, bytes, np.ndarray, Image.Image]
ERROR_COLUMNS = ["file", "reason"]
TRUST_COLUMNS = ["score_low", "score_high", "genre_confidence", "domain_score", "in_domain"]  # after ``score``
MEMO_SIZE = 1024  # embeddings of poster files a Predictor keeps in memory
NO_RELEASED_MODEL = "no released model in this installation: pass --model DIR or run `make release-model`"


def released_model_dir() -> Path:
    """Where the model released with the package lives (``src/posterlens/released/``)."""
    return RELEASED_DIR


def model_dir_or_released(model_dir: str | Path | None) -> Path:
    """``model_dir``, or the released model's directory; ``ModelError`` when there is none."""
    if model_dir is not None:
        return Path(model_dir)
    released = released_model_dir()
    if not (released / model_files.CONFIG).is_file():
        raise ModelError(NO_RELEASED_MODEL)
    return released


def _is_single(images: ImageInput | Iterable[ImageInput]) -> bool:
    """Whether ``images`` is one image rather than a list (or an (N, H, W, 3) array) of them."""
    return isinstance(images, (str, Path, bytes, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim < 4)


def _as_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """One image, or many (a list, or an (N, H, W, 3) array), as a list."""
    return [images] if _is_single(images) else list(images)


def _scratch(items: list[ImageInput]):
    """A temporary folder for the in-memory images among ``items`` (``None`` when all are files)."""
    if all(isinstance(item, (str, Path)) for item in items):
        return contextlib.nullcontext(None)
    return tempfile.TemporaryDirectory(prefix="posterlens-")


def _file_id(path: str, mirror: bool) -> tuple | None:
    """Identity of a file's current contents for ``Predictor``'s memo (path, size, mtime), or None."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return path, stat.st_size, stat.st_mtime_ns, mirror


def _lazy_runner(backbone: Backbone, cache: Path, engine: str) -> Runner:
    """``make_runner``, built on the first batch: posters found in the cache need no network."""
    built: list[Runner] = []

    def run(batch: np.ndarray) -> np.ndarray:
        if not built:
            built.append(make_runner(backbone, cache, engine))
        return built[0](batch)

    return run


def _write_image(image: ImageInput, path: Path) -> None:
    """An in-memory image as a file for the embedding step: bytes as they are, the others as PNG."""
    if isinstance(image, bytes):
        path.write_bytes(image)
        return
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise PosterError(path, f"array of shape {image.shape} and dtype {image.dtype}: expected HxWx3 uint8")
        image = Image.fromarray(image)
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        image = image.convert("RGB")
    image.save(path, format="PNG")


@dataclass
class Poster:
    """One input image on its way through prediction: ``read`` -> ``embed_posters`` -> ``apply_heads``
    -> ``outputs``. A poster with an ``error`` stops where it failed and is listed in the errors."""

    name: str  # the file path as given, or ``<image i>`` for an in-memory image
    path: str  # the file read (a temporary copy for an in-memory image)
    cached: bool  # a user file: its embedding and text go through the caches
    error: str | None = None
    key: str | None = None  # content hash (the feature cache key)
    features: np.ndarray | None = None
    text: str | None = None  # models trained with --text
    proba: np.ndarray | None = None  # genre probabilities


class Predictor:
    """A loaded model directory with its backbones ready to run.

    Embeddings of poster files are cached in ``cache`` (the ONNX exports live there too);
    in-memory images are embedded without touching the cache.
    """

    def __init__(self, model_dir: str | Path, cache: str | Path, engine: str = "auto", posters: str | Path | None = None):
        from threadpoolctl import ThreadpoolController

        self.model_dir = Path(model_dir)
        self.model = model_files.load(self.model_dir)
        try:
            self.index = SimilarIndex.load(self.model_dir, self.model.space_dim)
        except ValueError as err:
            raise ModelError(str(err)) from None
        self.cache = Path(cache)
        self.posters = None if posters is None else Path(posters)  # training posters' files, for similar movies
        resolve_engine(engine)  # an unknown name fails here, not at the first poster
        self.engine = engine  # resolved for each job: int8 pays for large ones (resolve_engine)
        self._runners: dict[str, list[Runner]] = {}  # by resolved engine
        self._threads = ThreadpoolController()
        self._memo: dict[tuple, tuple[np.ndarray, str | None]] = {}  # _file_id -> (features, cache key)
        self._reader = None  # rapidocr, built on the first poster to read (models trained with --text)

    def __repr__(self) -> str:
        info = self.model.info
        return (f"Predictor({str(self.model_dir)!r}: {self.model.features.name}, {len(self.model.genres)} genres, "
                f"trained on {info.get('n_train', '?')} posters, {_validation_summary(info.get('validation'))})")

    def embed(self, files: Sequence[str | Path], mirror: bool = False, progress: bool = False,
              use_cache: bool = True) -> Embeddings:
        """Features of poster files, from and into the cache unless ``use_cache`` is off."""
        backbones = self.model.features.backbones
        engine = resolve_engine(self.engine, backbones, self.cache, len(files))
        if engine not in self._runners:
            self._runners[engine] = [_lazy_runner(b, self.cache, engine) for b in backbones]
        return embed(files, self.model.features, self.cache, engine=engine, use_cache=use_cache,
                              runners=self._runners[engine], mirror=mirror, progress=progress)

    # --- the stages: read -> embed -> heads -> outputs, over one ``Poster`` record per image -------

    @staticmethod
    def read(items: list[ImageInput], tmp: Path) -> list[Poster]:
        """Stage 1: one record per distinct input, in input order; in-memory images are written to ``tmp``
        as files (the embedding reads files), and one that cannot be written gets its ``error``."""
        posters: dict[str, Poster] = {}
        for i, item in enumerate(items):
            if isinstance(item, (str, Path)):
                poster = Poster(str(item), str(item), cached=True)
            else:
                poster = Poster(f"<image {i}>", str(tmp / f"image-{i}.png"), cached=False)
                try:
                    _write_image(item, Path(poster.path))
                except (PosterError, OSError, ValueError, TypeError) as err:
                    poster.error = getattr(err, "reason", str(err))
            posters.setdefault(poster.name, poster)
        return list(posters.values())

    def embed_posters(self, posters: list[Poster], progress: bool = False) -> None:
        """Stage 2: each readable poster's features and cache key; an unreadable one gets its ``error``."""
        todo = [p for p in posters if p.error is None]
        X, keys, errors = self._features(todo, mirror=False, progress=progress)
        for poster, x, key in zip(todo, X, keys):
            poster.key = key
            poster.error = errors.get(poster.path)
            if poster.error is None:
                poster.features = x

    def apply_heads(self, posters: list[Poster], tta: bool = False, progress: bool = False) -> None:
        """Stage 3: genre probabilities of the embedded posters (``tta``: averaged with the mirror
        image, features too; a model trained with --text fuses each poster's text after that)."""
        done = [p for p in posters if p.error is None]
        if not done:
            return
        X = np.stack([p.features for p in done])
        P = self._heads(self.model.image_proba, X)
        if tta:
            mirrored, _, _ = self._features(done, mirror=True, progress=progress)
            P = (P + self._heads(self.model.image_proba, mirrored)) / 2
            X = (X + mirrored) / 2
        if self.model.text is not None:  # the text is fused after mirror averaging: a mirror has none
            texts = self._texts(done, progress)
            P = self.model.fuse(P, texts)
            for poster, text in zip(done, texts):
                poster.text = text
        for poster, x, p in zip(done, X, P):
            poster.features, poster.proba = x, p

    def outputs(self, posters: list[Poster], similar: int = 0, interval: float = INTERVAL) -> pd.DataFrame:
        """Stage 4: one row a readable poster (file, genres, score, ``TRUST_COLUMNS``, one probability
        column a genre, [similar]); ``attrs["errors"]`` lists the others (``file,reason``),
        ``attrs["genres"]`` the genres."""
        done, genres = [p for p in posters if p.error is None], self.model.genres
        P = np.array([p.proba for p in done], dtype=np.float32).reshape(len(done), len(genres))
        X = np.stack([p.features for p in done]) if done else np.zeros((0, self.model.features.feature_dim), np.float32)
        if done:
            texts = [p.text for p in done] if self.model.text is not None else None
            scores = self._heads(lambda X: self.model.score(X, texts), X)
            labels = self.model.genre_labels(P)
        else:  # the estimators refuse empty input
            labels, scores = np.zeros((0, len(genres)), dtype=bool), np.zeros(0)
        table = pd.DataFrame({
            "file": [p.name for p in done],
            "genres": [[g for g, on in zip(genres, row) if on] for row in labels],
            "score": scores.astype(np.float32),
            **self._trust(X, P, labels, scores, interval),
            **{g: P[:, j] for j, g in enumerate(genres)},
        })
        space = self.model.space(P, X) if done else P
        if similar:
            neighbours = self._neighbours(space, [p.key for p in done], similar) if done else []
            table["similar"] = [" | ".join(found["title"]) for found in neighbours]
        table.attrs["genres"] = list(genres)
        table.attrs["has_score"] = self.model.score_model is not None
        table.attrs["space"] = space  # each row's place in the similar-movies index
        table.attrs["keys"] = [p.key for p in done]
        table.attrs["errors"] = pd.DataFrame([(p.name, p.error) for p in posters if p.error is not None],
                                             columns=ERROR_COLUMNS)
        return table

    def predict(self, images: ImageInput | Iterable[ImageInput], tta: bool = False, similar: int = 0,
                progress: bool = False, warn: bool = True, interval: float = INTERVAL) -> pd.DataFrame:
        """Genres (the model's label rule), score and genre probabilities, one row a readable image.

        ``images`` is one image or many: file paths, PIL images, encoded bytes or HxWx3 uint8
        arrays (named ``<image 0>``, ``<image 1>``... by their position). The same file given
        twice is predicted once. ``tta`` averages each poster with its mirror image; ``similar``
        adds the titles of the K most similar training movies; ``interval`` is the level of
        ``score_low``/``score_high``. Unreadable images are in ``attrs["errors"]``
        (``file,reason``) and, with ``warn``, in a warning.
        """
        check_value(INTERVAL_RULE, interval, "interval")
        items = _as_list(images)
        with _scratch(items) as tmp:
            posters = self.read(items, Path(tmp or "."))
            self.embed_posters(posters, progress)
            self.apply_heads(posters, tta, progress)
        table = self.outputs(posters, similar, interval)
        errors = table.attrs["errors"]
        if warn and len(errors):
            warnings.warn(f"{len(errors)} of {len(posters)} images could not be read: "
                          + "; ".join(f"{n} ({r})" for n, r in errors.itertuples(index=False)), stacklevel=2)
        return table

    def similar(self, image: ImageInput, k: int = 10) -> pd.DataFrame:
        """The K training movies whose posters look most alike: id, title, genres, score, similarity, poster.

        ``poster`` is the movie's poster file where the model recorded its training catalogue, else empty.
        """
        with _scratch([image]) as tmp:
            [poster] = self.read([image], Path(tmp or "."))
            self.embed_posters([poster])
            self.apply_heads([poster])
        if poster.error is not None:
            raise PosterError(poster.name, poster.error)
        found = self._neighbours(self.model.space(poster.proba[None], poster.features[None]), [poster.key], k)[0]
        found = found[["id", "title", "genres", "score", "similarity"]]
        return found.assign(poster=found["id"].map(self.poster_files).fillna(""))

    # --- helpers of the stages -------------------------------------------------------------------

    def _trust(self, X: np.ndarray, P: np.ndarray, labels: np.ndarray, scores: np.ndarray,
               interval: float) -> dict[str, np.ndarray]:
        """``TRUST_COLUMNS`` of the embedded posters ``X`` (NaN, and NA for ``in_domain``, where the
        model has no such part)."""
        n = len(X)
        if n == 0:
            return {"score_low": np.zeros(0, np.float32), "score_high": np.zeros(0, np.float32),
                    "genre_confidence": np.zeros(0, np.float32), "domain_score": np.zeros(0, np.float32),
                    "in_domain": pd.array([], dtype="boolean")}
        low, high = self._heads(lambda rows: np.stack(self.model.score_interval(rows, scores, interval)), X)
        domain = self._heads(self.model.domain_score, X)
        return {"score_low": low, "score_high": high, "genre_confidence": self.model.genre_confidence(P, labels),
                "domain_score": domain,
                "in_domain": pd.array(np.where(np.isnan(domain), None, domain >= DOMAIN_SHARE), dtype="boolean")}

    def _features(self, posters: list[Poster], mirror: bool, progress: bool) -> tuple[np.ndarray, list, dict]:
        """``embed`` of user files (through the cache) and of temporary copies of in-memory images (not
        cached): (features, cache keys, errors by path). Files this predictor has embedded before,
        unchanged since, come from its memo: neither read nor hashed again, nor looked up in the disk cache."""
        X = np.full((len(posters), self.model.features.feature_dim), np.nan, dtype=np.float32)
        keys: list[str | None] = [None] * len(posters)
        ids = [_file_id(p.path, mirror) if p.cached else None for p in posters]
        for i, file_id in enumerate(ids):
            if file_id in self._memo:
                X[i], keys[i] = self._memo[file_id]
        errors: dict[str, str] = {}
        for use_cache in (True, False):
            rows = [i for i, p in enumerate(posters) if p.cached == use_cache and keys[i] is None]
            if rows:
                emb = self.embed([posters[i].path for i in rows], mirror, progress, use_cache)
                X[rows], errors = emb.features, {**errors, **emb.errors}
                for i, key, ok in zip(rows, emb.keys, emb.ok):
                    keys[i] = key
                    if ok and ids[i] is not None:
                        self._remember(ids[i], X[i], key)
        return X, keys, errors

    def _remember(self, file_id: tuple, vector: np.ndarray, key: str | None) -> None:
        if len(self._memo) >= MEMO_SIZE:
            del self._memo[next(iter(self._memo))]
        self._memo[file_id] = (vector.copy(), key)

    def _texts(self, posters: list[Poster], progress: bool) -> list[str | None]:
        """The posters' text (models trained with --text): user files through the text cache,
        temporary copies of in-memory images without it."""
        from posterlens.features.ocr import read_texts

        texts: list[str | None] = [None] * len(posters)
        for use_cache in (True, False):
            rows = [i for i, p in enumerate(posters) if p.cached == use_cache]
            if rows:
                found = read_texts([posters[i].path for i in rows], self.cache, self.model.text.settings,
                                   reader=self._ocr, progress=progress, use_cache=use_cache)
                for i, text in zip(rows, found.texts):
                    texts[i] = text
        return texts

    def _ocr(self, rgb: np.ndarray) -> str:
        if self._reader is None:
            from posterlens.features.ocr import ocr_reader

            self._reader = ocr_reader(self.model.text.settings)
        return self._reader(rgb)

    def _heads(self, predict, X: np.ndarray) -> np.ndarray:
        """``predict(X)`` with one BLAS thread: for the few rows of a prediction, waking more threads
        costs more than it saves (the score model on one poster: 23 ms -> 2.4 ms on two busy cores)."""
        with self._threads.limit(limits=1, user_api="blas"):
            return predict(X)

    def _neighbours(self, P: np.ndarray, keys: list[str | None], k: int) -> list[pd.DataFrame]:
        if self.index is None:
            raise ModelError(f"{self.model_dir}: no similar-movies index in this model directory")
        return self.index.query(P, k, exclude=keys)

    @cached_property
    def poster_files(self) -> dict[str, str]:
        """Poster file of each training movie in ``posters``, the folder the caller named (none: {}).

        A model never names files itself: its similar movies show the thumbnails it carries, or
        files of that folder only, ``<id>.jpg``, regular files whose real path stays inside it.
        """
        if self.posters is None or self.index is None:
            return {}
        folder = self.posters.resolve()
        found = {}
        for movie_id in self.index.movies["id"].astype(str):
            path = (folder / f"{movie_id}.jpg").resolve()
            if path.parent == folder and path.is_file():
                found[movie_id] = str(path)
        return found


def _validation_summary(validation: dict | None) -> str:
    """``20% holdout (seed 42): micro-F1 0.41, score MAE 0.84``, or ``not validated``."""
    if not validation:
        return "not validated"

    def value(v) -> float:
        return v["mean"] if isinstance(v, dict) else v

    parts = [f"micro-F1 {value(validation['genre']['micro_f1']):.2f}"] if "genre" in validation else []
    if validation.get("score"):
        parts.append(f"score MAE {value(validation['score']['mae']):.2f}")
    return f"{validation['method']}: {', '.join(parts)}"


def load(path: str | Path | None = None, cache: str | Path | None = None, engine: str = "auto",
         posters: str | Path | None = None) -> Predictor:
    """Load a model directory for predictions (``posterlens.load``).

    ``path`` defaults to the released model (``released_model_dir()``), ``cache`` to
    ``default_cache_dir()``; ``posters``: a folder of the training posters (``<id>.jpg``) for
    similar movies' ``poster`` column (the model's own thumbnails need none).
    """
    return Predictor(model_dir_or_released(path), cache or default_cache_dir(), engine, posters)


