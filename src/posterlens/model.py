"""The model directory: safetensors weights + one ``config.json``; loading never unpickles.

``config.json`` records the backbone and its preprocessing, the genre vocabulary and
thresholds, the score mode, the training settings, a fingerprint of the training data,
the package version and the SHA-256 of every other file in the directory: a missing or
changed file is refused with an error that names it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from posterlens import __version__
from posterlens.backbones import Backbone
from posterlens.heads import GenreHead, ScoreClassifier, ScoreRegressor, save_arrays

CONFIG = "config.json"
GENRE_FILE = "genre_head.safetensors"
SCORE_FILE = "score_head.safetensors"
FORMAT = 1


class ModelError(RuntimeError):
    """A model directory cannot be loaded; the message names the file and the problem."""


@dataclass
class PosterModel:
    """Everything needed to go from an embedding to genres and a score."""

    backbone: Backbone
    genres: list[str]
    thresholds: np.ndarray
    genre_head: GenreHead
    score_head: ScoreRegressor | ScoreClassifier | None  # None: the catalogue had no scores
    score_mode: str
    info: dict = field(default_factory=dict)  # training settings, data fingerprint, split...

    def genre_proba(self, X: np.ndarray) -> np.ndarray:
        return self.genre_head.predict_proba(X)

    def genre_labels(self, P: np.ndarray) -> np.ndarray:
        """Apply the tuned per-genre thresholds."""
        return (P >= self.thresholds).astype(np.float32)

    def score(self, X: np.ndarray) -> np.ndarray:
        if self.score_head is None:
            return np.full(len(X), np.nan, dtype=np.float32)
        return np.clip(self.score_head.predict(X), 0.0, 10.0)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(model: PosterModel, out: Path, extra_files: dict[str, Path] | None = None) -> Path:
    """Write the model directory; ``extra_files`` (already in ``out``) get checksums too."""
    out.mkdir(parents=True, exist_ok=True)
    save_arrays(model.genre_head.arrays(), out / GENRE_FILE)
    files = [GENRE_FILE, *(extra_files or {})]
    if model.score_head is not None:
        save_arrays(model.score_head.arrays(), out / SCORE_FILE)
        files.append(SCORE_FILE)
    config = {
        "format": FORMAT,
        "posterlens_version": __version__,
        "backbone": asdict(model.backbone),
        "genres": model.genres,
        "thresholds": [float(t) for t in model.thresholds],
        "genre_head": {"class": "GenreHead", "params": model.genre_head.params()},
        "score_mode": model.score_mode,
        "score_head": {"class": type(model.score_head).__name__, "params": model.score_head.params()}
        if model.score_head is not None else None,
        "files": {name: sha256(out / name) for name in files},
        **model.info,
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2))
    return out


def read_config(model_dir: Path) -> dict:
    """``config.json`` after checking every file it lists against its checksum."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG
    if not path.is_file():
        raise ModelError(f"{model_dir}: not a posterlens model directory (no {CONFIG})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from None
    if config.get("format") != FORMAT:
        raise ModelError(f"{path}: unsupported model format {config.get('format')!r} (expected {FORMAT})")
    for name, digest in config.get("files", {}).items():
        file = model_dir / name
        if not file.is_file():
            raise ModelError(f"{file}: missing from the model directory")
        if sha256(file) != digest:
            raise ModelError(f"{file}: checksum mismatch, the file changed after training")
    return config


def load(model_dir: Path) -> PosterModel:
    """Read a model directory written by ``save`` (safetensors + JSON only)."""
    from safetensors.numpy import load_file

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    score_classes = {"ScoreRegressor": ScoreRegressor, "ScoreClassifier": ScoreClassifier}
    score_head = None
    if config["score_head"] is not None:
        score_class = score_classes.get(config["score_head"]["class"])
        if score_class is None:
            raise ModelError(f"{model_dir / CONFIG}: unknown score head {config['score_head']['class']!r}")
        score_head = score_class.from_arrays(load_file(str(model_dir / SCORE_FILE)), config["score_head"]["params"])
    known = {"format", "posterlens_version", "backbone", "genres", "thresholds", "genre_head", "score_mode", "score_head", "files"}
    backbone = config["backbone"]
    return PosterModel(
        backbone=Backbone(**{**backbone, "mean": tuple(backbone["mean"]), "std": tuple(backbone["std"])}),
        genres=list(config["genres"]),
        thresholds=np.asarray(config["thresholds"], dtype=np.float32),
        genre_head=GenreHead.from_arrays(load_file(str(model_dir / GENRE_FILE)), config["genre_head"]["params"]),
        score_head=score_head,
        score_mode=config["score_mode"],
        info={k: v for k, v in config.items() if k not in known},
    )
