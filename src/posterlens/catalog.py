"""Catalogue readers: three input layouts -> one table, one row a movie.

The table has the columns in ``COLUMNS``:
``id`` (str), ``title`` (str), ``genres`` (list of str), ``score`` (float, NaN if unknown),
``path`` (local poster file or None) and ``url`` (poster URL or None).

Layouts:
- Kaggle ``MovieGenre.csv``: ``imdbId, Imdb Link, Title, IMDB Score, Genre, Poster``;
- Kaggle multi-label ``train.csv``: ``Id, Genre, <one-hot genre columns>``;
- a folder of posters with the score in the file name (``Inception_8.8.jpg``, ``6.1_76240.jpg``).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

log = logging.getLogger(__name__)

COLUMNS = ["id", "title", "genres", "score", "path", "url"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MOVIEGENRE_COLUMNS = ["imdbId", "Title", "IMDB Score", "Genre"]
ONEHOT_IGNORED = {"N/A"}
_SCORE_IN_NAME = [
    re.compile(r"^(?P<score>\d{1,2}(?:\.\d+)?)_(?P<title>.+)$"),  # 6.1_76240
    re.compile(r"^(?P<title>.+)_(?P<score>\d{1,2}(?:\.\d+)?)$"),  # Inception_8.8
]


class CatalogError(ValueError):
    """A catalogue cannot be read: the message names the file, the row and the problem."""


def read_catalog(source: str | Path, images: str | Path | None = None, require_posters: bool = True) -> pd.DataFrame:
    """Read any supported layout; ``source`` is a CSV file or a folder of posters.

    With ``require_posters`` rows whose poster is not in ``images`` are skipped and
    reported (a warning with the count); without it they are kept with ``path=None``
    (for example to download them).
    """
    source = Path(source)
    if source.is_dir():
        return read_score_folder(source)
    if not source.is_file():
        raise CatalogError(f"{source}: no such file or folder")
    raw = _read_csv(source)
    if {"Id", "Genre"} <= set(raw.columns) and "imdbId" not in raw.columns:
        table = _from_multilabel(raw, source)
    else:
        table = _from_moviegenre(raw, source)
    images_dir = Path(images) if images is not None else source.parent / "images"
    table = attach_posters(table, images_dir)
    if require_posters:
        table = drop_missing_posters(table, source)
    return table


def read_score_folder(folder: str | Path) -> pd.DataFrame:
    """Posters whose score is in the file name; genres are unknown (empty lists)."""
    folder = Path(folder)
    rows = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        title, score = _parse_score_name(path)
        rows.append({"id": path.stem, "title": title, "genres": [], "score": score, "path": str(path), "url": None})
    if not rows:
        raise CatalogError(f"{folder}: no poster images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    table = pd.DataFrame(rows, columns=COLUMNS)
    _check_unique_ids(table, folder, lambda i: f"file {table.path[i]}")
    return table


def _parse_score_name(path: Path) -> tuple[str, float]:
    for pattern in _SCORE_IN_NAME:
        match = pattern.match(path.stem)
        if match:
            score = float(match["score"])
            if 0 <= score <= 10:
                return match["title"].replace("_", " "), score
    raise CatalogError(
        f"{path}: no score in the file name (expected e.g. Inception_8.8.jpg or 6.1_76240.jpg)"
    )


def _read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV as text, sniffing the delimiter (comma or semicolon) and encoding."""
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            head = path.read_text(encoding=encoding)[:4096]
            break
        except UnicodeDecodeError:
            continue
    first_line = head.splitlines()[0] if head else ""
    if not first_line:
        raise CatalogError(f"{path}: the file is empty")
    delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
    try:
        return pd.read_csv(path, sep=delimiter, encoding=encoding, dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
    except pd.errors.ParserError as err:
        raise CatalogError(f"{path}: not a readable CSV ({err})") from err


def _require(raw: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise CatalogError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(raw.columns)}"
        )


def _row(i: int) -> str:
    """Human row number: line in the file (header is line 1)."""
    return f"row {i + 2}"


def _from_moviegenre(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    _require(raw, MOVIEGENRE_COLUMNS, path)
    rows = []
    for i, rec in enumerate(raw.to_dict("records")):
        imdb = rec["imdbId"].strip().removeprefix("tt")
        if not imdb.isdigit():
            raise CatalogError(f"{path}: {_row(i)}: imdbId {rec['imdbId']!r} is not a number")
        genres = [g.strip() for g in rec["Genre"].split("|") if g.strip()]
        if not genres:
            raise CatalogError(f"{path}: {_row(i)} (imdbId {imdb}): empty Genre")
        rows.append({
            "id": f"tt{int(imdb):07d}",
            "title": rec["Title"].strip(),
            "genres": genres,
            "score": _parse_score(rec["IMDB Score"], path, i),
            "path": None,
            "url": rec.get("Poster", "").strip() or None,
        })
    table = pd.DataFrame(rows, columns=COLUMNS)
    _check_unique_ids(table, path, _row)
    return table


def _parse_score(text: str, path: Path, i: int) -> float:
    try:
        score = float(text.strip().replace(",", "."))
    except ValueError:
        raise CatalogError(f"{path}: {_row(i)}: IMDB Score {text!r} is not a number") from None
    if math.isnan(score) or not 0 <= score <= 10:
        raise CatalogError(f"{path}: {_row(i)}: IMDB Score {text!r} is not between 0 and 10")
    return score


def _from_multilabel(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    genre_columns = [c for c in raw.columns if c not in {"Id", "Genre"} and c not in ONEHOT_IGNORED]
    if not genre_columns:
        raise CatalogError(f"{path}: no one-hot genre columns after Id, Genre")
    rows = []
    for i, rec in enumerate(raw.to_dict("records")):
        bad = [c for c in genre_columns if rec[c].strip() not in {"0", "1"}]
        if bad:
            raise CatalogError(f"{path}: {_row(i)} (Id {rec['Id']}): column {bad[0]} is {rec[bad[0]]!r}, expected 0 or 1")
        genres = [c for c in genre_columns if rec[c].strip() == "1"]
        if not genres:
            raise CatalogError(f"{path}: {_row(i)} (Id {rec['Id']}): no genre column is 1")
        rows.append({"id": rec["Id"].strip(), "title": rec["Id"].strip(), "genres": genres,
                     "score": float("nan"), "path": None, "url": None})
    table = pd.DataFrame(rows, columns=COLUMNS)
    _check_unique_ids(table, path, _row)
    return table


def _check_unique_ids(table: pd.DataFrame, path: Path, where) -> None:
    dup = table["id"].duplicated(keep="first")
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        first = int((table["id"] == table["id"].iloc[i]).to_numpy().nonzero()[0][0])
        raise CatalogError(f"{path}: {where(i)}: duplicate id {table['id'].iloc[i]} (first seen at {where(first)})")


def poster_candidates(movie_id: str, url: str | None) -> list[str]:
    """File names under which a movie's poster may be stored."""
    names = [f"{movie_id}.jpg"]
    if url:
        name = Path(urlparse(url).path).name
        if name:
            names.append(name)
    return names


def attach_posters(table: pd.DataFrame, images: Path) -> pd.DataFrame:
    """Fill ``path`` with the poster file found in ``images`` (None where there is none)."""
    present = {p.name for p in images.iterdir()} if images.is_dir() else set()
    paths = []
    for movie_id, url in zip(table["id"], table["url"]):
        found = next((n for n in poster_candidates(movie_id, url) if n in present), None)
        paths.append(str(images / found) if found else None)
    return table.assign(path=paths)


def drop_missing_posters(table: pd.DataFrame, source: Path | str) -> pd.DataFrame:
    """Skip rows without a poster file, with a warning that gives the count."""
    missing = table["path"].isna()
    if missing.all():
        raise CatalogError(f"{source}: none of the {len(table)} posters was found")
    if missing.any():
        log.warning("%s: %d of %d movies have no poster file and are skipped (e.g. %s)",
                    source, int(missing.sum()), len(table), ", ".join(table["id"][missing].head(3)))
    return table[~missing].reset_index(drop=True)


def genre_vocabulary(table: pd.DataFrame) -> list[str]:
    """All genres in the table, most frequent first (ties by name)."""
    counts = pd.Series([g for genres in table["genres"] for g in genres]).value_counts()
    return sorted(counts.index, key=lambda g: (-counts[g], g))


def genre_matrix(table: pd.DataFrame, genres: list[str]):
    """Multi-hot matrix (movies x genres) as float32."""
    import numpy as np

    index = {g: j for j, g in enumerate(genres)}
    y = np.zeros((len(table), len(genres)), dtype=np.float32)
    for i, movie_genres in enumerate(table["genres"]):
        for g in movie_genres:
            if g in index:
                y[i, index[g]] = 1.0
    return y
