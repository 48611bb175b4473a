"""Batch predictions and similar movies: the one code path behind the CLI, the DAG and the API.

    >>> import posterlens
    >>> predictor = posterlens.load("runs/model")
    >>> predictor.predict(["poster.jpg"])          # DataFrame: file, score, genres, probabilities
    >>> predictor.similar("poster.jpg", k=10)      # DataFrame: title, genres, score, similarity

Output files, in the original design's formats:
``predictions_score.csv`` (``file,label``), ``predictions_genre.csv``
(``file,predicted_labels,raw_probs``), ``predictions_final.csv`` (both merged on the file)
and ``errors.csv`` (``file,reason``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from posterlens import features, model as model_files, safeio
from posterlens.images import PosterError
from posterlens.similar import SimilarIndex

ERROR_COLUMNS = ["file", "reason"]


@dataclass
class Predictions:
    """One row a readable poster (``table``) and one row a poster that was not (``errors``)."""

    table: pd.DataFrame  # file, score, genres (list), probabilities (dict), [similar]
    errors: pd.DataFrame  # file, reason


class Predictor:
    """A loaded model directory with its backbones ready to run.

    Embeddings of predicted posters are cached in ``cache`` (the ONNX exports live there too).
    """

    def __init__(self, model_dir: str | Path, cache: str | Path, engine: str = "auto"):
        self.model_dir = Path(model_dir)
        self.model = model_files.load(self.model_dir)
        self.index = SimilarIndex.load(self.model_dir, len(self.model.genres))
        self.cache = Path(cache)
        self.runners = [features.make_runner(b, self.cache, engine) for b in self.model.features.backbones]

    def embed(self, files: Sequence[str | Path], mirror: bool = False, progress: bool = False) -> features.Embeddings:
        return features.embed(files, self.model.features, self.cache, runners=self.runners, mirror=mirror,
                              progress=progress)

    def _genre_proba(self, files: Sequence[str], tta: bool, progress: bool) -> tuple[features.Embeddings, np.ndarray]:
        emb = self.embed(files, progress=progress)
        P = np.full((len(files), len(self.model.genres)), np.nan, dtype=np.float32)
        ok = emb.ok
        P[ok] = self.model.genre_proba(emb.features[ok])
        if tta and ok.any():
            mirrored = self.embed([f for f, good in zip(files, ok) if good], mirror=True, progress=progress)
            P[ok] = (P[ok] + self.model.genre_proba(mirrored.features)) / 2
            emb.features[ok] = (emb.features[ok] + mirrored.features) / 2
        return emb, P

    def predict(self, files: Sequence[str | Path], tta: bool = False, similar: int = 0,
                progress: bool = False) -> Predictions:
        """Genres (the model's label rule applied), probabilities and score for each poster file.

        ``tta`` averages each poster with its mirror image; ``similar`` adds the titles of
        the K most similar training movies.
        """
        files = list(dict.fromkeys(str(f) for f in files))  # the same poster twice is predicted once
        emb, P = self._genre_proba(files, tta, progress)
        ok = emb.ok
        scores = np.full(len(files), np.nan, dtype=np.float32)
        scores[ok] = self.model.score(emb.features[ok])
        labels = self.model.genre_labels(np.nan_to_num(P, nan=0.0))
        genres = self.model.genres
        table = pd.DataFrame({
            "file": files,
            "score": scores,
            "genres": [[g for g, on in zip(genres, row) if on] for row in labels],
            "probabilities": [dict(zip(genres, map(float, row))) for row in P],
        })[ok].reset_index(drop=True)
        if similar:
            table["similar"] = [" | ".join(found["title"]) for found in self._neighbours(P[ok], emb, ok, similar)]
        errors = pd.DataFrame(list(emb.errors.items()), columns=ERROR_COLUMNS)
        return Predictions(table, errors)

    def _neighbours(self, P: np.ndarray, emb: features.Embeddings, ok: np.ndarray, k: int) -> list[pd.DataFrame]:
        if self.index is None:
            raise model_files.ModelError(f"{self.model_dir}: no similar-movies index in this model directory")
        keys = [key for key, good in zip(emb.keys, ok) if good]
        return self.index.query(P, k, exclude=keys)

    def similar(self, image: str | Path, k: int = 10) -> pd.DataFrame:
        """The K training movies whose posters are most similar: title, genres, score, similarity."""
        emb, P = self._genre_proba([str(image)], tta=False, progress=False)
        if not emb.ok[0]:
            raise PosterError(image, emb.errors.get(str(image), "cannot be read"))
        found = self._neighbours(P[emb.ok], emb, emb.ok, k)[0]
        return found[["id", "title", "genres", "score", "similarity"]]


def load(model_dir: str | Path, cache: str | Path | None = None) -> Predictor:
    """Load a model directory for predictions (``posterlens.load``); ``cache`` defaults to
    ``features.default_cache_dir()``."""
    return Predictor(model_dir, cache or features.default_cache_dir())


def image_files(folder: Path) -> list[Path]:
    """Every file in a folder that may be a poster (bad ones are reported, not skipped)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() not in {".csv", ".json", ".txt", ".md"})


def part_tables(predictions: Predictions) -> dict[str, pd.DataFrame]:
    """Score, genre and error tables in the original formats."""
    t = predictions.table
    score = pd.DataFrame({"file": t["file"], "label": t["score"].round(1)})
    genre = pd.DataFrame({
        "file": t["file"],
        "predicted_labels": ["|".join(g) for g in t["genres"]],
        "raw_probs": [json.dumps({g: round(p, 4) for g, p in probs.items()}, separators=(",", ":"))
                      for probs in t["probabilities"]],
    })
    return {"predictions_score.csv": score, "predictions_genre.csv": genre, "errors.csv": predictions.errors}


def merge_tables(score: pd.DataFrame, genre: pd.DataFrame) -> pd.DataFrame:
    """``predictions_final.csv``: the score and genre tables merged on the file."""
    return score.rename(columns={"label": "score"}).merge(genre, on="file", how="outer", validate="one_to_one")


def write_parts(predictions: Predictions, out: Path) -> dict[str, Path]:
    """Write the score, genre and error CSV files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    return {name: safeio.write_csv(table, out / name) for name, table in part_tables(predictions).items()}


def merge_files(out: Path) -> Path:
    """Merge ``predictions_score.csv`` and ``predictions_genre.csv`` in ``out`` into ``predictions_final.csv``."""
    score = pd.read_csv(out / "predictions_score.csv", dtype={"file": str})
    genre = pd.read_csv(out / "predictions_genre.csv", dtype={"file": str}, keep_default_na=False)
    return safeio.write_csv(merge_tables(score, genre), out / "predictions_final.csv")


def write(predictions: Predictions, out: Path) -> dict[str, Path]:
    """Write all four CSV files (with a ``similar`` column in the final one when predicted)."""
    written = write_parts(predictions, out)
    parts = part_tables(predictions)
    final = merge_tables(parts["predictions_score.csv"], parts["predictions_genre.csv"])
    if "similar" in predictions.table:
        final["similar"] = predictions.table["similar"].to_numpy()
    written["predictions_final.csv"] = safeio.write_csv(final, out / "predictions_final.csv")
    return written
