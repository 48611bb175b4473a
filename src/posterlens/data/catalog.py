"""Catalogue readers: three input layouts -> one table, one row a movie.

The table has the columns in ``COLUMNS``:
``id`` (str), ``title`` (str), ``genres`` (list of str), ``score`` (float, NaN if unknown),
``path`` (local poster file or None) and ``url`` (poster URL or None).

Layouts:
- Kaggle ``MovieGenre.csv``: ``imdbId, Imdb Link, Title, IMDB Score, Genre, Poster``;
- Kaggle multi-label ``train.csv``: ``Id, Genre, <one-hot genre columns>``;
- a folder of posters with the score in the file name (``Inception_8.8.jpg``, ``6.1_76240.jpg``).

Hostile input is read, not crashed on: CSVs are UTF-8, with lines that are not read as
Windows-1252/Latin-1 (one warning names them); empty cells are empty (a missing score is
NaN; a row with neither genres nor score is skipped with a warning); genre names are
normalised (``normalise_genre``); every problem is a one-line ``CatalogError``
naming the file and the row.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import logging
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

import pandas as pd

from posterlens.data.images import IMAGE_SUFFIXES
from posterlens.errors import CatalogError

__all__ = ["CatalogError", "COLUMNS", "IMAGE_SUFFIXES", "read_catalog", "read_score_folder", "normalise_genre",
           "movie_table", "poster_candidates", "attach_posters", "drop_missing_posters", "genre_vocabulary",
           "genre_matrix"]

log = logging.getLogger(__name__)

COLUMNS = ["id", "title", "genres", "score", "path", "url"]
MOVIEGENRE_COLUMNS = ["imdbId", "Title", "IMDB Score", "Genre"]
ONEHOT_IGNORED = {"N/A"}
# Genre spellings that Title Case would change (keys are case-folded).
GENRE_SPELLINGS = {"reality-tv": "Reality-TV"}
_TRAILING_SCORE = re.compile(r"^(?P<title>.+)_(?P<score>\d+(?:\.\d+)?)$")  # 8_Mile_(2002)_7.1
_LEADING_SCORE = re.compile(r"^(?P<score>\d+(?:\.\d+)?)_(?P<title>.+)$")  # 6.1_76240
_NAME_HELP = "expected e.g. Inception_8.8.jpg or 6.1_76240.jpg, a score from 0 to 10"
_SNIFF_BYTES = 64 * 1024  # the prefix read to find the delimiter
_CHUNK_ROWS = 20_000  # CSV rows parsed at a time
_SHOWN = 10  # row numbers listed in a warning before "and N more"
MAX_GENRES_A_MOVIE = 50  # a Genre cell with more names than this is not a genre list


def read_catalog(source: str | Path, images: str | Path | None = None, require_posters: bool = True) -> pd.DataFrame:
    """Read any supported layout; ``source`` is a CSV file or a folder of posters.

    With ``require_posters`` rows whose poster is not in ``images`` are skipped and
    reported (a warning with the count); without it they are kept with ``path=None``
    (for example to download them).
    """
    source = Path(source)
    if source.is_dir():
        return read_score_folder(source)
    if not source.exists():
        raise CatalogError(f"{source}: no such file or folder")
    if not source.is_file():
        raise CatalogError(f"{source}: not a regular file (a catalogue is a CSV file or a folder of posters)")
    with _csv_chunks(source) as (columns, chunks):
        if {"Id", "Genre"} <= set(columns) and "imdbId" not in columns:
            table = _from_multilabel(columns, chunks, source)
        else:
            table = _from_moviegenre(columns, chunks, source)
    images_dir = Path(images) if images is not None else source.parent / "images"
    table = attach_posters(table, images_dir)
    if require_posters:
        table = drop_missing_posters(table, source)
    return table


def read_score_folder(folder: str | Path) -> pd.DataFrame:
    """A folder of posters: genres unknown (empty lists), the score from each file name where it
    holds one (``Inception_8.8.jpg``), else NaN with one warning: such posters can be embedded and
    predicted, not used to train or evaluate a score model."""
    folder = Path(folder)
    rows, unscored = [], []
    for path in sorted(p for p in folder.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")):
        title, score = _parse_score_name(path)
        if math.isnan(score):
            unscored.append(path.name)
        rows.append({"id": path.stem, "title": title, "genres": [], "score": score, "path": str(path), "url": None})
    if not rows:
        raise CatalogError(f"{folder}: no poster images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    if unscored:
        log.warning("%s: %d of %d posters have no score from 0 to 10 in their file name (%s): they can be embedded "
                    "and predicted, not used to train or evaluate a score model (%s)", folder, len(unscored), len(rows),
                    ", ".join(unscored[:3]) + (", ..." if len(unscored) > 3 else ""), _NAME_HELP)
    table = movie_table(rows)
    _check_unique_ids(table, folder, lambda i: f"file {table.path[i]}")
    return table


def _parse_score_name(path: Path) -> tuple[str, float]:
    """Title and score from a file name: its last number, else its first (``6.1_76240``), where it is
    from 0 to 10; else the whole name and NaN."""
    found = [(m["title"], float(m["score"])) for m in
             (pattern.match(path.stem) for pattern in (_TRAILING_SCORE, _LEADING_SCORE)) if m]
    for title, score in found:
        if 0 <= score <= 10:
            return title.replace("_", " "), score
    return path.stem.replace("_", " "), math.nan


# --------------------------------------------------------------------------- CSV text


def _decode_legacy(line: bytes) -> str:
    """A line that is not UTF-8: Windows-1252, or Latin-1 for its 5 undefined bytes."""
    try:
        return line.decode("cp1252")
    except UnicodeDecodeError:
        return line.decode("latin-1")


class _UTF8Lines(io.RawIOBase):
    """A binary file read as UTF-8, one line at a time; lines that are not UTF-8 are
    decoded with ``_decode_legacy`` and their numbers (1 = header) kept in ``legacy``."""

    def __init__(self, raw: BinaryIO):
        self._lines = iter(raw)
        self._pending = b""
        self._number = 0
        self.legacy: list[int] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            line = next(self._lines, None)
            if line is None:
                return 0
            self._number += 1
            self._pending = self._to_utf8(line)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _to_utf8(self, line: bytes) -> bytes:
        try:
            line.decode("utf-8")
            return line
        except UnicodeDecodeError:
            self.legacy.append(self._number)
            return _decode_legacy(line).encode("utf-8")


def _sniff_delimiter(path: Path) -> str:
    """Comma or semicolon, from the first line of the file's first ``_SNIFF_BYTES``."""
    with path.open("rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CatalogError(f"{path}: UTF-16 text is not supported; save the file as CSV UTF-8")
    first_line = head.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()[0] if head.strip() else ""
    if not first_line.strip():
        raise CatalogError(f"{path}: the file is empty (or its first line is)")
    return ";" if first_line.count(";") > first_line.count(",") else ","


@contextmanager
def _csv_chunks(path: Path) -> Iterator[tuple[list[str], Iterator[pd.DataFrame]]]:
    """``with _csv_chunks(path) as (columns, chunks)``: the header, and the rows as text
    DataFrames of ``_CHUNK_ROWS`` rows, read once; then warns about lines that were not UTF-8."""
    delimiter = _sniff_delimiter(path)
    with path.open("rb") as raw:
        lines = _UTF8Lines(raw)
        chunks = _parsed(io.BufferedReader(lines), delimiter, path)
        first = next(chunks, None)
        if first is None:
            raise CatalogError(f"{path}: not a readable CSV (no header)")
        yield [str(c) for c in first.columns], itertools.chain([first], chunks)
    if lines.legacy:
        log.warning("%s: line(s) %s are not UTF-8 and were read as Windows-1252/Latin-1; "
                    "save the file as UTF-8 if accents look wrong", path, _few(lines.legacy))


def _parsed(stream: BinaryIO, delimiter: str, path: Path) -> Iterator[pd.DataFrame]:
    """The CSV's rows as text, ``_CHUNK_ROWS`` at a time; parser errors as ``CatalogError``.

    ``index_col=False``: a first row with more cells than the header is an error like any other
    row's (pandas would otherwise take the first column as an index and shift every cell)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            yield from pd.read_csv(stream, sep=delimiter, encoding="utf-8-sig", dtype=str, keep_default_na=False,
                                   quoting=csv.QUOTE_MINIMAL, chunksize=_CHUNK_ROWS, index_col=False)
    except pd.errors.ParserWarning:
        raise CatalogError(f"{path}: a row has more cells than the header has columns "
                           "(a stray delimiter?): fix the row or quote the cell") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise CatalogError(f"{path}: not a readable CSV ({str(err).strip()})") from None


def _few(numbers: list[int]) -> str:
    """``"3, 7, 9"`` or ``"3, 7, ... and 12 more"`` (at most ``_SHOWN`` listed)."""
    shown = ", ".join(str(n) for n in numbers[:_SHOWN])
    return shown + (f" and {len(numbers) - _SHOWN} more" if len(numbers) > _SHOWN else "")


def _records(chunks: Iterable[pd.DataFrame]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(i, row)`` for every CSV row, ``i`` counted from 0 across chunks."""
    i = 0
    for chunk in chunks:
        for rec in chunk.to_dict("records"):
            yield i, rec
            i += 1


def _text(value: Any) -> str:
    """A cell as stripped text; empty for a missing cell (NaN, None)."""
    return value.strip() if isinstance(value, str) else ""


def _require(columns: list[str], required: list[str], path: Path) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise CatalogError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns)}"
        )


def _row(i: int) -> str:
    """Human row number: line in the file (header is line 1)."""
    return f"row {i + 2}"


# --------------------------------------------------------------------------- genres and scores


@functools.lru_cache(maxsize=4096)  # a catalogue has a few dozen distinct spellings
def normalise_genre(name: str) -> str:
    """One spelling per genre: NFKC, no zero-width/format characters, single spaces, Title Case.

    >>> [normalise_genre(g) for g in ["DRAMA", " drama\u200b", "sci-fi", "Reality-TV", "film  noir"]]
    ['Drama', 'Drama', 'Sci-Fi', 'Reality-TV', 'Film Noir']
    """
    text = unicodedata.normalize("NFKC", name)
    text = "".join(c for c in text if unicodedata.category(c) not in ("Cf", "Cc"))
    folded = " ".join(text.split()).casefold()
    return GENRE_SPELLINGS.get(folded) or re.sub(r"(^|[\s-])(\w)", lambda m: m[1] + m[2].upper(), folded)


def _genres(names: Iterable[str]) -> list[str]:
    """Normalised, non-empty, without duplicates, in order."""
    return list(dict.fromkeys(g for g in map(normalise_genre, names) if g))


def _parse_score(text: str, path: Path, i: int) -> float:
    """A score from 0 to 10; NaN for an empty cell."""
    if not text:
        return math.nan
    try:
        score = float(text.replace(",", "."))
    except ValueError:
        raise CatalogError(f"{path}: {_row(i)}: IMDB Score {text!r} is not a number") from None
    if math.isnan(score) or not 0 <= score <= 10:
        raise CatalogError(f"{path}: {_row(i)}: IMDB Score {text!r} is not between 0 and 10")
    return score


# --------------------------------------------------------------------------- layouts


def _from_moviegenre(columns: list[str], chunks: Iterable[pd.DataFrame], path: Path) -> pd.DataFrame:
    _require(columns, MOVIEGENRE_COLUMNS, path)
    rows, row_numbers, skipped = [], [], []
    for i, rec in _records(chunks):
        genres = _genres(_text(rec["Genre"]).split("|"))
        if len(genres) > MAX_GENRES_A_MOVIE:
            raise CatalogError(f"{path}: {_row(i)}: {len(genres):,} genres; a movie has at most {MAX_GENRES_A_MOVIE}")
        score = _parse_score(_text(rec["IMDB Score"]), path, i)
        if not genres and math.isnan(score):
            skipped.append(i)
            continue
        imdb = _text(rec["imdbId"]).removeprefix("tt")
        if not imdb.isdigit():
            raise CatalogError(f"{path}: {_row(i)}: imdbId {rec['imdbId']!r} is not a number")
        rows.append({"id": f"tt{int(imdb):07d}", "title": _text(rec["Title"]), "genres": genres,
                     "score": score, "path": None, "url": _text(rec.get("Poster")) or None})
        row_numbers.append(i)
    return _finish(rows, row_numbers, skipped, path)


def _from_multilabel(columns: list[str], chunks: Iterable[pd.DataFrame], path: Path) -> pd.DataFrame:
    genre_columns = {c: normalise_genre(c) for c in columns if c not in {"Id", "Genre"} and c not in ONEHOT_IGNORED}
    if not genre_columns:
        raise CatalogError(f"{path}: no one-hot genre columns after Id, Genre")
    rows, row_numbers, skipped = [], [], []
    for i, rec in _records(chunks):
        movie_id = _text(rec["Id"])
        cells = {c: _text(rec[c]) for c in genre_columns}
        bad = [c for c, v in cells.items() if v not in {"0", "1", ""}]
        if bad:
            raise CatalogError(f"{path}: {_row(i)} (Id {movie_id}): column {bad[0]} is {cells[bad[0]]!r}, expected 0 or 1")
        genres = _genres(genre_columns[c] for c, v in cells.items() if v == "1")
        if not genres:
            skipped.append(i)
            continue
        if not movie_id:
            raise CatalogError(f"{path}: {_row(i)}: empty Id")
        rows.append({"id": movie_id, "title": movie_id, "genres": genres,
                     "score": math.nan, "path": None, "url": None})
        row_numbers.append(i)
    return _finish(rows, row_numbers, skipped, path)


def _finish(rows: list[dict[str, Any]], row_numbers: list[int], skipped: list[int], path: Path) -> pd.DataFrame:
    """The table of ``rows``; warns about skipped rows and rows kept for their score only."""
    if skipped:
        log.warning("%s: %d row(s) with neither genres nor a score skipped: %s",
                    path, len(skipped), _few([i + 2 for i in skipped]))
    no_genre = [n + 2 for n, r in zip(row_numbers, rows) if not r["genres"]]
    if no_genre:
        log.warning("%s: %d row(s) have no genre and are kept for their score only: %s",
                    path, len(no_genre), _few(no_genre))
    table = movie_table(rows)
    _check_unique_ids(table, path, lambda k: _row(row_numbers[k]))
    return table


def movie_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The ``COLUMNS`` table; ``path`` and ``url`` keep None (not NaN) where missing."""
    table = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("path", "url"):
        table[column] = pd.Series([r[column] for r in rows], index=table.index, dtype=object)
    table["score"] = table["score"].astype(float)
    return table


def _check_unique_ids(table: pd.DataFrame, path: Path, where: Callable[[int], str]) -> None:
    dup = table["id"].duplicated(keep="first")
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        first = int((table["id"] == table["id"].iloc[i]).to_numpy().nonzero()[0][0])
        raise CatalogError(f"{path}: {where(i)}: duplicate id {table['id'].iloc[i]} (first seen at {where(first)})")


def poster_candidates(movie_id: str, url: str | None) -> list[str]:
    """File names under which a movie's poster may be stored."""
    names = [f"{movie_id}.jpg"]
    if isinstance(url, str) and url:
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
    return table.assign(path=pd.Series(paths, index=table.index, dtype=object))


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
