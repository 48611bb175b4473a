"""Similar movies by poster: nearest neighbours in the learned genre space (hnswlib, cosine).

A poster is placed by its genre probability vector, the genre head's view of it. On the
development set's held-out posters, 79% of the 10 nearest training posters share a genre
with the query in this space, against 66% with cosine on the raw (mean-centred) backbone
features and 52% for random neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["SimilarIndex", "genre_precision_at_k", "random_precision"]

INDEX_FILE = "similar.hnsw"
MOVIES_FILE = "similar_movies.csv"


@dataclass
class SimilarIndex:
    """An hnswlib index over the training posters, and who they are."""

    index: object  # hnswlib.Index
    movies: pd.DataFrame  # id, title, genres ("A|B"), score, key

    @classmethod
    def build(cls, vectors: np.ndarray, movies: pd.DataFrame, seed: int = 42) -> "SimilarIndex":
        import hnswlib

        index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
        index.init_index(max_elements=len(vectors), ef_construction=200, M=16, random_seed=seed)
        index.add_items(vectors.astype(np.float32), np.arange(len(vectors)))
        index.set_ef(200)
        return cls(index, movies.reset_index(drop=True))

    def save(self, model_dir: Path) -> list[str]:
        """Write the index and the movie table; returns the file names."""
        self.index.save_index(str(model_dir / INDEX_FILE))
        self.movies.to_csv(model_dir / MOVIES_FILE, index=False)
        return [INDEX_FILE, MOVIES_FILE]

    @classmethod
    def load(cls, model_dir: Path, dim: int) -> "SimilarIndex | None":
        import hnswlib

        if not (model_dir / INDEX_FILE).is_file():
            return None
        movies = pd.read_csv(model_dir / MOVIES_FILE, dtype={"id": str, "title": str, "genres": str, "key": str},
                             keep_default_na=False)
        index = hnswlib.Index(space="cosine", dim=dim)
        index.load_index(str(model_dir / INDEX_FILE), max_elements=len(movies))
        index.set_ef(200)
        return cls(index, movies)

    def query(self, vectors: np.ndarray, k: int, exclude: list[str | None] | None = None) -> list[pd.DataFrame]:
        """The ``k`` most similar training movies for each vector (a poster never matches itself)."""
        k = min(k, len(self.movies))
        extra = 1 if exclude else 0
        labels, distances = self.index.knn_query(vectors.astype(np.float32), k=min(k + extra, len(self.movies)))
        results = []
        for i, (row, dist) in enumerate(zip(labels, distances)):
            found = self.movies.iloc[row].assign(similarity=1.0 - dist)
            if exclude and exclude[i] is not None:
                found = found[found["key"] != exclude[i]]
            results.append(found.head(k).reset_index(drop=True))
        return results


def genre_precision_at_k(neighbours: list[pd.DataFrame], query_genres: list[list[str]]) -> float:
    """Share of the neighbours that share at least one genre with their query."""
    shares = [np.mean([bool(set(q) & set(g.split("|"))) for g in found["genres"]])
              for found, q in zip(neighbours, query_genres) if len(found)]
    return float(np.mean(shares))


def random_precision(index_genres: list[str], query_genres: list[list[str]]) -> float:
    """Expected genre precision of neighbours drawn at random from the index (exact)."""
    sets = [set(g.split("|")) for g in index_genres]
    return float(np.mean([np.mean([bool(set(q) & s) for s in sets]) for q in query_genres]))
