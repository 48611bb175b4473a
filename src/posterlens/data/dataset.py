"""A catalogue's posters with their embeddings: what training, evaluation, tuning and
comparison read (``features.embed.load_dataset`` builds one), and the choice of genres.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from posterlens.data import catalog
from posterlens.errors import DataError

__all__ = ["Dataset", "labelled", "choose_genres"]

log = logging.getLogger(__name__)


def labelled(table: pd.DataFrame) -> np.ndarray:
    """Mask of the rows that have genres (a score-only row, e.g. ``Title_8.8.jpg``, has none)."""
    return np.fromiter((len(g) > 0 for g in table["genres"]), dtype=bool, count=len(table))


@dataclass
class Dataset:
    """A catalogue's readable posters: the table (``catalog.COLUMNS``), one embedding a row, the
    content hash of each poster, and with ``--text`` the text read on it (None: not read)."""

    table: pd.DataFrame
    X: np.ndarray
    keys: list[str]
    texts: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def labelled(self) -> np.ndarray:
        """Mask of the posters that have genres."""
        return labelled(self.table)

    @property
    def scores(self) -> np.ndarray:
        """Each poster's score (NaN: none)."""
        return self.table["score"].to_numpy(dtype=float)

    def genre_matrix(self, genres: list[str], rows: np.ndarray | None = None) -> np.ndarray:
        """0/1 matrix (posters x ``genres``), of ``rows`` where given."""
        return catalog.genre_matrix(self.table if rows is None else self.table.iloc[rows], genres)

    def texts_of(self, rows: np.ndarray) -> list[str | None] | None:
        """The texts of ``rows`` (None without --text)."""
        return None if self.texts is None else [self.texts[i] for i in rows]

    def subset(self, mask_or_rows: np.ndarray) -> "Dataset":
        """The posters of a boolean mask or of a list of rows, renumbered."""
        rows = np.flatnonzero(mask_or_rows) if np.asarray(mask_or_rows).dtype == bool else np.asarray(mask_or_rows)
        return Dataset(self.table.iloc[rows].reset_index(drop=True), self.X[rows], [self.keys[i] for i in rows],
                       self.texts_of(rows))


SHOWN = 20  # genres named in the "left out" warning before "and N more"
NO_GENRES = ("the catalogue has no genres (a folder of Title_8.8.jpg posters has scores only): "
             "train on a MovieGenre.csv or multi-label CSV, which give each poster its genres")


def choose_genres(table: pd.DataFrame, min_count: int) -> list[str]:
    """Genres with at least ``min_count`` posters; the others are left out with a warning."""
    vocabulary = catalog.genre_vocabulary(table)
    if not vocabulary:
        raise DataError(NO_GENRES)
    counts = catalog.genre_matrix(table, vocabulary).sum(axis=0)
    kept = [g for g, c in zip(vocabulary, counts) if c >= min_count]
    dropped = [f"{g} ({int(c)})" for g, c in zip(vocabulary, counts) if c < min_count]
    if dropped:
        shown = ", ".join(dropped[:SHOWN]) + (f" and {len(dropped) - SHOWN:,} more" if len(dropped) > SHOWN else "")
        log.warning("left out %d genre(s) with fewer than %d training posters: %s", len(dropped), min_count, shown)
    if len(kept) < 2:
        advice = "add posters or lower --min-genre-count" if min_count > 1 else "add posters with other genres"
        raise DataError(f"{len(kept)} genre(s) have {min_count} or more posters; the genre model needs 2 or more: {advice}")
    return kept
