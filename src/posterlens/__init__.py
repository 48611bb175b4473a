"""posterlens: read a movie from its poster (genres, IMDb-style score, similar movies).

    >>> import posterlens
    >>> predictor = posterlens.load()     # the released model; or posterlens.load("runs/model")
    >>> predictor.predict("poster.jpg")   # DataFrame: file, genres, score, one probability column a genre
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__all__ = ["load", "__version__"]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from posterlens.workflows.predict import Predictor


def load(path: str | Path | None = None, cache: str | Path | None = None,
         posters: str | Path | None = None) -> "Predictor":
    """Load a model directory (default: the released model) for ``predict(images)`` and ``similar(image, k)``.

    ``cache`` is the feature cache folder (default: ``$POSTERLENS_CACHE`` or ``~/.cache/posterlens``);
    ``posters`` a folder of the training posters, ``<id>.jpg``, for ``similar``'s ``poster`` column.
    """
    from posterlens.workflows.predict import load as _load

    return _load(path, cache, posters=posters)
