"""``TrainConfig``: the settings of a training run, their defaults, their rules and their reader.

Each default is written here once: the CLI's options default to "unset" and fall through to
these fields, the Airflow DAG's params are built from them, and ``train --config`` files are
read by ``TrainConfig.from_file``. Importing this module is light (no numpy): the CLI shows
the defaults in its help.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posterlens.errors import SettingsError, TrainError
from posterlens.features.backbones import DEFAULT_FEATURES
from posterlens.settings import Choice, Range, check, read_file

__all__ = ["TrainConfig", "SCORE_MODES", "TUNE_BUDGET", "TUNE_QUICK_BUDGET"]

SCORE_MODES = ("regression", "classes")  # ``estimators.SCORE_ESTIMATORS``' keys
TUNE_BUDGET = 12  # configurations ``tune`` draws at random per model, besides today's defaults
TUNE_QUICK_BUDGET = 4  # the same under ``tune --quick``


@dataclass
class TrainConfig:
    """Settings of a training run (saved in the model's ``config.json``).

    Estimator hyper-parameters that differ from the estimators' own defaults go in
    ``genre`` / ``score`` (``GenreClassifier`` / the score estimator's parameters, each
    checked against its ``RULES``); ``seed`` seeds every estimator and every split.
    """

    backbones: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))
    weights: str | None = None  # weights file, for a single backbone without offline weights
    folds: int = 0  # 0: one holdout split; K: K-fold cross-validation
    holdout: float = 0.2  # share of the posters held out (0: none)
    refit: bool = True  # after validation, refit on every training poster
    seed: int = 42
    score_mode: str = "regression"
    min_genre_count: int = 20  # genres with fewer training posters are left out
    genre: dict = field(default_factory=dict)
    score: dict = field(default_factory=dict)
    text: bool = False  # read poster text (rapidocr) and fuse a text genre model with the image one
    thumbnails: bool = True  # keep a small thumbnail of each training poster for similar movies (~1 KB each)

    RULES = {  # not a field (no annotation)
        "folds": Range(0, 100, integer=True), "holdout": Range(0, 0.9), "refit": Choice((False, True)),
        "seed": Range(0, 2**32 - 1, integer=True), "score_mode": Choice(SCORE_MODES),
        "min_genre_count": Range(1, 1_000_000_000, integer=True), "text": Choice((False, True)),
        "thumbnails": Choice((False, True)),
    }

    def __post_init__(self) -> None:
        check(self.RULES, {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, flag=True)
        if self.folds == 1:
            raise SettingsError("--folds: 1 is not a cross-validation: use 0 (holdout) or 2 or more")
        if not (isinstance(self.backbones, list) and self.backbones and all(isinstance(b, str) for b in self.backbones)):
            raise SettingsError(f"--backbone: give one or more backbone names (got {self.backbones!r})")
        if self.weights and len(self.backbones) > 1:
            raise SettingsError("--weights applies to a single --backbone")
        for name in ("genre", "score"):
            self._check_estimator(name)
        if self.text:
            from posterlens.features.ocr import require_rapidocr

            require_rapidocr()

    def _check_estimator(self, name: str) -> None:
        """``genre`` / ``score``: known parameters of the estimator, each within its ``RULES``."""
        from posterlens.models.fitted import PARAM_RULES

        given = getattr(self, name)
        estimator = "GenreClassifier" if name == "genre" else self.score_class_name
        rules = PARAM_RULES[estimator]
        if not isinstance(given, dict):
            raise SettingsError(f"{name}: expected an object of {estimator} settings, got {given!r}")
        unknown = sorted(set(given) - set(rules))
        if unknown:
            raise SettingsError(f"unknown {name} model setting(s) {unknown}: {estimator} takes {sorted(rules)}")
        check(rules, given, name)

    @property
    def score_class_name(self) -> str:
        return "ScoreRegressor" if self.score_mode == "regression" else "ScoreClassifier"

    def genre_estimator(self):
        """A ``GenreClassifier`` with this run's settings and seed."""
        from posterlens.models.estimators import GenreClassifier

        return GenreClassifier(**{"seed": self.seed, **self.genre})

    def score_estimator(self):
        """The score estimator of ``score_mode`` with this run's settings and seed."""
        from posterlens.models.estimators import SCORE_ESTIMATORS

        return SCORE_ESTIMATORS[self.score_mode](**{"seed": self.seed, **self.score})

    def feature_spec(self):
        """The ``FeatureSpec`` of ``backbones`` (and ``weights``)."""
        from posterlens.features import backbones
        from posterlens.features.embed import FeatureSpec

        return FeatureSpec(tuple(backbones.resolve(name, self.weights) for name in self.backbones))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each field's default (the CLI and the DAG fall through to these)."""
        default = cls()
        return {f.name: getattr(default, f.name) for f in dataclasses.fields(cls)}

    @classmethod
    def from_file(cls, path: str | Path) -> dict:
        """A JSON or YAML file of ``TrainConfig`` fields (``best.json`` from ``tune``) -> keyword
        arguments, checked (size and depth capped, known keys, rules); ``SettingsError`` names the file."""
        loaded = read_file(path)
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(loaded, dict):
            raise SettingsError(f"{path}: expected an object of {', '.join(sorted(known))}")
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise SettingsError(f"{path}: unknown key(s) {unknown}: TrainConfig takes {', '.join(sorted(known))}")
        try:
            cls(**loaded)
        except (SettingsError, TrainError, TypeError) as err:
            raise SettingsError(f"{path}: {err}") from None
        return loaded
