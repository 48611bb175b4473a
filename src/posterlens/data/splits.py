"""Every way posterlens splits posters, in one place.

Genre splits are multi-label stratified (iterative stratification, so rare genres land in
every part); score splits, and any split of posters without genres, are plain shuffled ones. Each takes a seed and returns row
indices. An estimator records the splits it used (``GenreClassifier.calibration_splits_``)
so that a model fitted beside it (the text model) reads them instead of rebuilding them.
"""

from __future__ import annotations

import numpy as np

from posterlens.errors import DataError

__all__ = ["Split", "holdout_split", "kfold_splits", "calibration_splits", "score_folds", "restrict"]

Split = tuple[np.ndarray, np.ndarray]  # (train rows, test rows)


def holdout_split(Y: np.ndarray, fraction: float, seed: int) -> Split:
    """One train/test split, ``fraction`` of the posters in the test part, stratified on ``Y``'s genres."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit
    from sklearn.model_selection import ShuffleSplit

    if round(len(Y) * fraction) < 1 or len(Y) - round(len(Y) * fraction) < 2:
        raise DataError(f"{len(Y)} poster{'s are' if len(Y) != 1 else ' is'} too few for a {fraction:.0%} holdout: "
                        "add posters or use --holdout 0")
    if Y.shape[1] == 0:  # no genres (a score-only catalogue): a plain shuffled split
        splitter = ShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    else:
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    train, test = next(splitter.split(np.zeros(len(Y)), Y))
    return np.sort(train), np.sort(test)


def kfold_splits(Y: np.ndarray, folds: int, seed: int) -> list[Split]:
    """K folds stratified on ``Y``'s genres, for cross-validation (``train --folds``, ``tune``)."""
    if folds < 2:
        raise DataError(f"--folds must be 2 or more (got {folds})")
    if len(Y) < 2 * folds:
        raise DataError(f"{len(Y)} posters are too few for {folds} folds: add posters or lower --folds")
    return calibration_splits(Y, folds, seed)


def calibration_splits(Y: np.ndarray, folds: int, seed: int) -> list[Split]:
    """K folds stratified on ``Y``'s genres, unchecked: the folds whose out-of-fold predictions
    calibrate a genre model (``GenreClassifier.calibration_folds``)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if Y.shape[1] == 0:  # no genres (a score-only catalogue): plain shuffled folds
        return score_folds(len(Y), folds, seed)
    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(Y)), Y))


def score_folds(n: int, folds: int, seed: int) -> list[Split]:
    """K shuffled folds of ``n`` scored posters (out-of-fold score predictions for stacking)."""
    from sklearn.model_selection import KFold

    return list(KFold(folds, shuffle=True, random_state=seed).split(np.zeros(n)))


def restrict(splits: list[Split], rows: np.ndarray) -> list[Split]:
    """Folds over all posters -> the same folds over the posters where the mask ``rows`` is set (renumbered)."""
    position = np.cumsum(rows) - 1
    return [(position[tr[rows[tr]]], position[te[rows[te]]]) for tr, te in splits]
