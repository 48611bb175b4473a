"""Predictions and similar movies: the one code path behind the CLI, the DAG and the API.

    >>> import posterlens
    >>> predictor = posterlens.load()                # the released model, or load("runs/model")
    >>> predictor.predict("poster.jpg")              # DataFrame: file, genres, score, one column a genre
    >>> predictor.similar("poster.jpg", k=10)        # DataFrame: id, title, genres, score, similarity, poster

``predict`` takes one image or a list: file paths, PIL images, encoded bytes or HxWx3 uint8
arrays. Images that cannot be read are left out of the table and listed in
``table.attrs["errors"]`` (``file,reason``).

Output files, in the original design's formats:
``predictions_score.csv`` (``file,label``), ``predictions_genre.csv``
(``file,predicted_labels,raw_probs``), ``predictions_final.csv`` (both merged on the file)
and ``errors.csv`` (``file,reason``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import pandas as pd
from PIL import Image

from posterlens import features, model as model_files, safeio
from posterlens.backbones import Backbone
from posterlens.images import PosterError
from posterlens.similar import SimilarIndex

log = logging.getLogger(__name__)

ImageInput = Union[str, Path, bytes, np.ndarray, Image.Image]
ERROR_COLUMNS = ["file", "reason"]
MEMO_SIZE = 1024  # embeddings of poster files a Predictor keeps in memory
NO_RELEASED_MODEL = "no released model in this installation: pass --model DIR or run `make release-model`"


def released_model_dir() -> Path:
    """Where the model released with the package lives (``src/posterlens/released/``)."""
    return Path(__file__).parent / "released"


def model_dir_or_released(model_dir: str | Path | None) -> Path:
    """``model_dir``, or the released model's directory; ``ModelError`` when there is none."""
    if model_dir is not None:
        return Path(model_dir)
    released = released_model_dir()
    if not (released / model_files.CONFIG).is_file():
        raise model_files.ModelError(NO_RELEASED_MODEL)
    return released


def _is_single(images: ImageInput | Iterable[ImageInput]) -> bool:
    """Whether ``images`` is one image rather than a list (or an (N, H, W, 3) array) of them."""
    return isinstance(images, (str, Path, bytes, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim < 4)


def _as_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """One image, or many (a list, or an (N, H, W, 3) array), as a list."""
    return [images] if _is_single(images) else list(images)


def _first_of_each(names: list[str]) -> list[int]:
    """Positions of the first occurrence of each name, in order."""
    return sorted({name: i for i, name in reversed(list(enumerate(names)))}.values())


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


def _lazy_runner(backbone: Backbone, cache: Path, engine: str) -> features.Runner:
    """``features.make_runner``, built on the first batch: posters found in the cache need no network."""
    built: list[features.Runner] = []

    def run(batch: np.ndarray) -> np.ndarray:
        if not built:
            built.append(features.make_runner(backbone, cache, engine))
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


class Predictor:
    """A loaded model directory with its backbones ready to run.

    Embeddings of poster files are cached in ``cache`` (the ONNX exports live there too);
    in-memory images are embedded without touching the cache.
    """

    def __init__(self, model_dir: str | Path, cache: str | Path, engine: str = "auto"):
        from threadpoolctl import ThreadpoolController

        self.model_dir = Path(model_dir)
        self.model = model_files.load(self.model_dir)
        self.index = SimilarIndex.load(self.model_dir, len(self.model.genres))
        self.cache = Path(cache)
        features.resolve_engine(engine)  # an unknown name fails here, not at the first poster
        self.engine = engine  # resolved for each job: int8 pays for large ones (features.resolve_engine)
        self._runners: dict[str, list[features.Runner]] = {}  # by resolved engine
        self._threads = ThreadpoolController()
        self._memo: dict[tuple, tuple[np.ndarray, str | None]] = {}  # _file_id -> (features, cache key)
        self._reader = None  # rapidocr, built on the first poster to read (models trained with --text)

    def __repr__(self) -> str:
        info = self.model.info
        return (f"Predictor({str(self.model_dir)!r}: {self.model.features.name}, {len(self.model.genres)} genres, "
                f"trained on {info.get('n_train', '?')} posters, {_validation_summary(info.get('validation'))})")

    def embed(self, files: Sequence[str | Path], mirror: bool = False, progress: bool = False,
              use_cache: bool = True) -> features.Embeddings:
        """Features of poster files, from and into the cache unless ``use_cache`` is off."""
        backbones = self.model.features.backbones
        engine = features.resolve_engine(self.engine, backbones, self.cache, len(files))
        if engine not in self._runners:
            self._runners[engine] = [_lazy_runner(b, self.cache, engine) for b in backbones]
        return features.embed(files, self.model.features, self.cache, engine=engine, use_cache=use_cache,
                              runners=self._runners[engine], mirror=mirror, progress=progress)

    def _embed_mixed(self, paths: list[str], cached: np.ndarray, mirror: bool, progress: bool) -> features.Embeddings:
        """``embed`` of user files (``cached``) and of temporary copies of in-memory images (not cached).

        Files this predictor has embedded before, unchanged since, come from its memo: the
        disk cache is read whole on each ``features.embed`` call.
        """
        X = np.full((len(paths), self.model.features.feature_dim), np.nan, dtype=np.float32)
        keys: list[str | None] = [None] * len(paths)
        ids = [_file_id(p, mirror) if c else None for p, c in zip(paths, cached)]
        for i, file_id in enumerate(ids):
            if file_id in self._memo:
                X[i], keys[i] = self._memo[file_id]
        errors: dict[str, str] = {}
        for use_cache in (True, False):
            rows = [i for i in np.flatnonzero(cached == use_cache) if keys[i] is None]
            if rows:
                emb = self.embed([paths[i] for i in rows], mirror, progress, use_cache)
                X[rows], errors = emb.features, {**errors, **emb.errors}
                for i, key, ok in zip(rows, emb.keys, emb.ok):
                    keys[i] = key
                    if ok and ids[i] is not None:
                        self._remember(ids[i], X[i], key)
        return features.Embeddings(paths, X, keys, errors)

    def _remember(self, file_id: tuple, vector: np.ndarray, key: str | None) -> None:
        if len(self._memo) >= MEMO_SIZE:
            del self._memo[next(iter(self._memo))]
        self._memo[file_id] = (vector.copy(), key)

    def _proba(self, paths: list[str], cached: np.ndarray, tta: bool,
               progress: bool) -> tuple[features.Embeddings, np.ndarray, list[str | None] | None]:
        """Embeddings, genre probabilities and (models trained with --text) texts of the readable posters."""
        emb = self._embed_mixed(paths, cached, False, progress)
        P = np.full((len(paths), len(self.model.genres)), np.nan, dtype=np.float32)
        ok, texts = emb.ok, None
        if not ok.any():
            return emb, P, texts
        P[ok] = self._heads(self.model.image_proba, emb.features[ok])
        if tta:
            mirrored = self._embed_mixed([p for p, good in zip(paths, ok) if good], cached[ok], True, progress)
            P[ok] = (P[ok] + self._heads(self.model.image_proba, mirrored.features)) / 2
            emb.features[ok] = (emb.features[ok] + mirrored.features) / 2
        if self.model.text is not None:  # the text is fused after mirror averaging: a mirror has none
            texts = self._texts([p for p, good in zip(paths, ok) if good], cached[ok], progress)
            P[ok] = self.model.fuse(P[ok], texts)
        return emb, P, texts

    def _texts(self, paths: list[str], cached: np.ndarray, progress: bool) -> list[str | None]:
        """The posters' text (models trained with --text): user files through the text cache,
        temporary copies of in-memory images without it."""
        from posterlens.text import read_texts

        texts: list[str | None] = [None] * len(paths)
        for use_cache in (True, False):
            rows = np.flatnonzero(cached == use_cache)
            if len(rows):
                found = read_texts([paths[i] for i in rows], self.cache, self.model.text.settings, reader=self._ocr,
                                   progress=progress, use_cache=use_cache)
                for i, text in zip(rows, found.texts):
                    texts[i] = text
        return texts

    def _ocr(self, rgb: np.ndarray) -> str:
        if self._reader is None:
            from posterlens.text import ocr_reader

            self._reader = ocr_reader(self.model.text.settings)
        return self._reader(rgb)

    def _heads(self, predict, X: np.ndarray) -> np.ndarray:
        """``predict(X)`` with one BLAS thread: for the few rows of a prediction, waking more threads
        costs more than it saves (the score model on one poster: 23 ms -> 2.4 ms on two busy cores)."""
        with self._threads.limit(limits=1, user_api="blas"):
            return predict(X)

    def predict(self, images: ImageInput | Iterable[ImageInput], tta: bool = False, similar: int = 0,
                progress: bool = False, warn: bool = True) -> pd.DataFrame:
        """Genres (the model's label rule), score and genre probabilities, one row a readable image.

        ``images`` is one image or many: file paths, PIL images, encoded bytes or HxWx3 uint8
        arrays (named ``<image 0>``, ``<image 1>``... by their position). The same file given
        twice is predicted once. ``tta`` averages each poster with its mirror image; ``similar``
        adds the titles of the K most similar training movies. Unreadable images are in
        ``attrs["errors"]`` (``file,reason``) and, with ``warn``, in a warning.
        """
        items = _as_list(images)
        with _scratch(items) as tmp:
            names, paths, failed = self._materialise(items, Path(tmp or "."))
            keep = [i for i in _first_of_each(names) if names[i] not in failed]
            cached = np.array([isinstance(items[i], (str, Path)) for i in keep], dtype=bool)
            emb, P, texts = self._proba([paths[i] for i in keep], cached, tta, progress)
        table = self._table([names[i] for i in keep], emb, P, texts, similar)
        unread = {**failed, **{names[keep[j]]: r for j, r in enumerate(map(emb.errors.get, emb.paths)) if r}}
        reasons = {name: unread[name] for name in dict.fromkeys(names) if name in unread}  # in input order
        table.attrs["errors"] = pd.DataFrame(list(reasons.items()), columns=ERROR_COLUMNS)
        if warn and reasons:
            warnings.warn(f"{len(reasons)} of {len(set(names))} images could not be read: "
                          + "; ".join(f"{n} ({r})" for n, r in reasons.items()), stacklevel=2)
        return table

    @staticmethod
    def _materialise(items: list[ImageInput], tmp: Path) -> tuple[list[str], list[str], dict[str, str]]:
        """Names and file paths of the inputs (in-memory images written to ``tmp``), and failures to write."""
        names, paths, failed = [], [], {}
        for i, item in enumerate(items):
            if isinstance(item, (str, Path)):
                names.append(str(item))
                paths.append(str(item))
                continue
            name, path = f"<image {i}>", tmp / f"image-{i}.png"
            try:
                _write_image(item, path)
            except (PosterError, OSError, ValueError, TypeError) as err:
                failed[name] = getattr(err, "reason", str(err))
            names.append(name)
            paths.append(str(path))
        return names, paths, failed

    def _table(self, names: list[str], emb: features.Embeddings, P: np.ndarray, texts: list[str | None] | None,
               similar: int) -> pd.DataFrame:
        """One row a readable image: file, genres, score, one probability column a genre, [similar]."""
        ok, genres = emb.ok, self.model.genres
        if ok.any():
            scores = self._heads(lambda X: self.model.score(X, texts), emb.features[ok])
            labels = self.model.genre_labels(P[ok])
        else:  # the estimators refuse empty input
            labels, scores = np.zeros((0, len(genres)), dtype=bool), np.zeros(0)
        table = pd.DataFrame({
            "file": [n for n, good in zip(names, ok) if good],
            "genres": [[g for g, on in zip(genres, row) if on] for row in labels],
            "score": scores.astype(np.float32),
            **{g: P[ok, j] for j, g in enumerate(genres)},
        })
        if similar:
            neighbours = self._neighbours(P[ok], emb, ok, similar) if ok.any() else []
            table["similar"] = [" | ".join(found["title"]) for found in neighbours]
        table.attrs["genres"] = list(genres)
        return table

    def _neighbours(self, P: np.ndarray, emb: features.Embeddings, ok: np.ndarray, k: int) -> list[pd.DataFrame]:
        if self.index is None:
            raise model_files.ModelError(f"{self.model_dir}: no similar-movies index in this model directory")
        keys = [key for key, good in zip(emb.keys, ok) if good]
        return self.index.query(P, k, exclude=keys)

    def similar(self, image: ImageInput, k: int = 10) -> pd.DataFrame:
        """The K training movies whose posters look most alike: id, title, genres, score, similarity, poster.

        ``poster`` is the movie's poster file where the model recorded its training catalogue, else empty.
        """
        with _scratch([image]) as tmp:
            names, paths, failed = self._materialise([image], Path(tmp or "."))
            if failed:
                raise PosterError(names[0], failed[names[0]])
            cached = np.array([isinstance(image, (str, Path))])
            emb, P, _ = self._proba(paths, cached, tta=False, progress=False)
        if not emb.ok[0]:
            raise PosterError(names[0], emb.errors.get(paths[0], "cannot be read"))
        found = self._neighbours(P[emb.ok], emb, emb.ok, k)[0]
        found = found[["id", "title", "genres", "score", "similarity"]]
        return found.assign(poster=found["id"].map(self.poster_files).fillna(""))

    @cached_property
    def poster_files(self) -> dict[str, str]:
        """Poster file of each training movie, from the catalogue the model records (``info["catalog"]``)."""
        from posterlens.catalog import CatalogError, read_catalog

        source = self.model.info.get("catalog")
        if not source or not Path(source).is_file():  # e.g. a released model away from its build machine
            return {}
        try:
            table = read_catalog(source, self.model.info.get("images"), require_posters=False)
        except (CatalogError, OSError) as err:
            log.warning("no poster paths for similar movies: %s", err)
            return {}
        return {str(i): str(p) for i, p in zip(table["id"], table["path"]) if p}


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


def load(path: str | Path | None = None, cache: str | Path | None = None, engine: str = "auto") -> Predictor:
    """Load a model directory for predictions (``posterlens.load``).

    ``path`` defaults to the released model (``released_model_dir()``), ``cache`` to
    ``features.default_cache_dir()``.
    """
    return Predictor(model_dir_or_released(path), cache or features.default_cache_dir(), engine)


def image_files(folder: Path) -> list[Path]:
    """Every file in a folder that may be a poster (bad ones are reported, not skipped)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() not in {".csv", ".json", ".txt", ".md"})


def part_tables(predictions: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Score, genre and error tables in the original formats, from ``Predictor.predict``'s table."""
    t, genres = predictions, predictions.attrs["genres"]
    score = pd.DataFrame({"file": t["file"], "label": t["score"].round(1)})
    genre = pd.DataFrame({
        "file": t["file"],
        "predicted_labels": ["|".join(g) for g in t["genres"]],
        "raw_probs": [json.dumps({g: round(float(p), 4) for g, p in zip(genres, row)}, separators=(",", ":"))
                      for row in t[genres].itertuples(index=False)],
    })
    return {"predictions_score.csv": score, "predictions_genre.csv": genre, "errors.csv": predictions.attrs["errors"]}


def merge_tables(score: pd.DataFrame, genre: pd.DataFrame) -> pd.DataFrame:
    """``predictions_final.csv``: the score and genre tables merged on the file."""
    return score.rename(columns={"label": "score"}).merge(genre, on="file", how="outer", validate="one_to_one")


def write_parts(predictions: pd.DataFrame, out: Path) -> dict[str, Path]:
    """Write the score, genre and error CSV files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    return {name: safeio.write_csv(table, out / name) for name, table in part_tables(predictions).items()}


def merge_files(out: Path) -> Path:
    """Merge ``predictions_score.csv`` and ``predictions_genre.csv`` in ``out`` into ``predictions_final.csv``."""
    score = pd.read_csv(out / "predictions_score.csv", dtype={"file": str})
    genre = pd.read_csv(out / "predictions_genre.csv", dtype={"file": str}, keep_default_na=False)
    return safeio.write_csv(merge_tables(score, genre), out / "predictions_final.csv")


def final_table(predictions: pd.DataFrame, catalog: pd.DataFrame | None = None, wide: bool = False) -> pd.DataFrame:
    """``predictions_final.csv``: with ``id,title`` after the file when the posters came from a
    catalogue (its ``path,id,title``), ``similar`` when predicted, and with ``wide`` one
    probability column a genre."""
    parts = part_tables(predictions)
    final = merge_tables(parts["predictions_score.csv"], parts["predictions_genre.csv"])
    if catalog is not None:
        names = catalog.assign(file=catalog["path"].astype(str))[["file", "id", "title"]].drop_duplicates("file")
        final = final.merge(names, on="file", how="left")
        final = final[["file", "id", "title", *[c for c in final.columns if c not in ("file", "id", "title")]]]
    if "similar" in predictions:
        final["similar"] = predictions["similar"].to_numpy()
    if wide:
        genres = predictions.attrs["genres"]
        final = pd.concat([final, predictions[genres].round(4).reset_index(drop=True)], axis=1)
    return final


def write(predictions: pd.DataFrame, out: Path, catalog: pd.DataFrame | None = None, wide: bool = False) -> dict[str, Path]:
    """Write all four CSV files; ``catalog`` and ``wide`` as in ``final_table``."""
    written = write_parts(predictions, out)
    written["predictions_final.csv"] = safeio.write_csv(final_table(predictions, catalog, wide), out / "predictions_final.csv")
    return written
