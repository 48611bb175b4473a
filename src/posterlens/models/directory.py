"""The model directory: safetensors arrays + ``config.json``; it is data, never code.

``config.json`` names the backbones (registered names, or plain timm architecture names
with their weights file inside the directory), the genres, the estimators' classes and
parameters, the training settings and validation figures, and the SHA-256 of every other
file; its own digest covers the rest of it. ``load`` checks all of that against a schema
before building anything: an unknown class, a path, an out-of-range number or a shape that
does not fit is refused with one line naming the file and the problem.

``save`` writes the whole directory to a temporary sibling and swaps it in, so a failed or
interrupted save leaves the previous model as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from posterlens import __version__
from posterlens.errors import BackboneError, ModelError, TextModelError
from posterlens.features import backbones
from posterlens.features.embed import FeatureSpec
from posterlens.features.ocr import OcrSettings
from posterlens.models.fitted import HEADS, GenreHead, ScoreClassesHead, ScoreHead, save_arrays
from posterlens.models.trust import DomainHead, ScoreIntervals, expected_f1, trust_parts

__all__ = ["CONFIG", "GENRE_FILE", "SCORE_FILE", "TRUST_FILE", "CURVES_FILE", "TRAINING_SET_FILE", "TEXT_FILES", "FORMAT", "ModelError", "PosterModel", "save", "load",
           "read_config", "sha256"]

if TYPE_CHECKING:
    from posterlens.models.text import TextModel

CONFIG = "config.json"
GENRE_FILE = "genre_model.safetensors"
SCORE_FILE = "score_model.safetensors"
TRUST_FILE = "trust.safetensors"  # the domain head and the score intervals (``models.trust``)
CURVES_FILE = "training_curves.csv"  # fastai training curves
TRAINING_SET_FILE = "training_set.csv"  # id and content key of each training poster
FORMAT = 2
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # a file name or timm name: no path, no '..'
_KNOWN = {"format", "posterlens_version", "backbones", "genres", "genre_model", "score_mode", "score_model",
          "text_model", "trust", "files", "digest"}
# What training records beside the models (``PosterModel.info``), with the type each must have. Nothing
# here is a path the code follows: a model is data confined to its folder.
_INFO = {"training": dict, "n_train": int, "n_train_genres": int, "n_train_scores": int, "train_genre_counts": dict,
         "train_score_mean": (float, int, type(None)), "data_fingerprint": str, "validation": (dict, type(None)),
         "evaluated_on": str, "holdout_ids": list, "n_corrections": int}
_LEGACY = {"catalog", "images"}  # written by models before 2026-12 (build-machine paths): accepted, never read
TEXT_FILES = ["text_model.safetensors", "text_model.json"]  # what a text model (``models.text``) adds
TEXT_OCR = set(OcrSettings.__dataclass_fields__)


@dataclass
class PosterModel:
    """Everything needed to go from an embedding to genres and a score."""

    features: FeatureSpec
    genres: list[str]  # empty for a score-only model
    genre_model: GenreHead | None  # a fitted GenreClassifier's ``head_``; None: no genres to learn from
    score_model: ScoreHead | ScoreClassesHead | None  # None: no scores to learn from
    score_mode: str
    info: dict = field(default_factory=dict)  # training settings, validation, data fingerprint, split...
    curves: pd.DataFrame | None = field(default=None, repr=False)  # fastai training curves (training only)
    text: TextModel | None = None  # trained with --text: poster text fused with the image model
    domain: DomainHead | None = None  # "is this like the training posters?" (models before 2026-12: none)
    intervals: ScoreIntervals | None = None  # conformal score intervals (idem)

    def genre_proba(self, X: np.ndarray, texts: list[str | None] | None = None) -> np.ndarray:
        """Genre probabilities; a model with ``text`` needs each poster's text (``None``: not read)."""
        return self.fuse(self.image_proba(X), texts)

    def image_proba(self, X: np.ndarray) -> np.ndarray:
        """The image model's probabilities alone (``fuse`` adds the text, after mirror averaging)."""
        if self.genre_model is None:
            return np.zeros((len(X), 0), dtype=np.float32)
        return self.genre_model.predict_proba(X)

    def fuse(self, P_image: np.ndarray, texts: list[str | None] | None) -> np.ndarray:
        """``P_image`` fused with the posters' texts where the model has a text part, else as it is."""
        if self.text is None:
            return P_image
        if texts is None or len(texts) != len(P_image):
            raise ValueError("this model was trained with --text: pass each poster's text (text.read_texts)")
        return self.text.predict_proba(P_image, texts)

    def genre_labels(self, P: np.ndarray) -> np.ndarray:
        """The label rule (the fusion's where the model has a text part), applied to probabilities already computed."""
        if self.genre_model is None:
            return np.zeros((len(P), 0), dtype=np.float32)
        return self.genre_model.labels(P) if self.text is None else self.text.labels(P)

    @property
    def thresholds(self) -> np.ndarray:
        if self.genre_model is None:
            return np.zeros(0, dtype=np.float32)
        return self.genre_model.thresholds_ if self.text is None else self.text.fusion.rule_.thresholds_

    @property
    def kind(self) -> str:
        """``genres and score``, ``genres only`` or ``score only``: what the training data held."""
        if self.genre_model is None:
            return "score only"
        return "genres only" if self.score_model is None else "genres and score"

    @property
    def space_dim(self) -> int:
        """The length of ``space``'s vectors (the similar-movies index is built on them)."""
        if self.genre_model is not None:
            return len(self.genres)
        if hasattr(self.score_model, "reduce"):
            return int(self.score_model.arrays["pca.components_"].shape[0])
        return len(self.score_model.classes_)

    def space(self, P: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Where similar movies are looked for: the genre probabilities ``P``; for a score-only model,
        what its score model sees (``ScoreHead.reduce``: standardised, PCA; or its class probabilities)."""
        if self.genre_model is not None:
            return P
        if hasattr(self.score_model, "reduce"):
            return self.score_model.reduce(X).astype(np.float32)
        return self.score_model.predict_proba(X).astype(np.float32)

    def score(self, X: np.ndarray, texts: list[str | None] | None = None) -> np.ndarray:
        """The score, 0-10; a model whose text part has a score model needs each poster's text, as ``fuse``."""
        if self.score_model is None:
            return np.full(len(X), np.nan, dtype=np.float32)
        predicted = self.score_model.predict(X)
        if self.text is not None and self.text.score is not None:
            if texts is None or len(texts) != len(X):
                raise ValueError("this model was trained with --text: pass each poster's text (text.read_texts)")
            predicted = self.text.predict_score(predicted, texts)
        return np.clip(predicted, 0.0, 10.0)

    def domain_score(self, X: np.ndarray) -> np.ndarray:
        """``DomainHead.score`` of each poster (NaN for a model without a domain head)."""
        if self.domain is None:
            return np.full(len(X), np.nan, dtype=np.float32)
        return self.domain.score(X)

    def score_interval(self, X: np.ndarray, predicted: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) around the ``predicted`` scores at ``level`` (``ScoreIntervals``; NaN without them)."""
        if self.intervals is None or self.score_model is None:
            nan = np.full(len(X), np.nan, dtype=np.float32)
            return nan, nan.copy()
        if self.intervals.kind == "set":
            return self.intervals.interval(predicted, level, proba=self.score_model.predict_proba(X),
                                           classes=self.score_model.classes_)
        return self.intervals.interval(predicted, level, reduced=self.score_model.reduce(X))

    def genre_confidence(self, P: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The expected F1 of each poster's genres (``trust.expected_f1``; NaN for a score-only model)."""
        return expected_f1(P, labels)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _config_digest(config: dict) -> str:
    body = {k: v for k, v in config.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _backbone_entry(backbone: backbones.Backbone, out: Path) -> dict:
    """How ``config.json`` names a backbone; a weights file of the user's is copied into ``out``."""
    registered = backbones.REGISTRY.get(backbone.name)
    if registered is not None and registered.weights == backbone.weights:
        return {"name": backbone.name}
    if backbone.weights == "timm-hub":
        return {"name": backbone.name, "weights": "timm-hub"}
    source = Path(backbone.weights)
    name = f"weights-{backbone.name}{source.suffix}"
    shutil.copyfile(source, out / name)
    return {"name": backbone.name, "weights": name}


def save(model: PosterModel, out: Path, tables: dict[str, pd.DataFrame] | None = None, index=None) -> Path:
    """Write the model directory ``out`` whole or not at all (built in a temporary sibling, then swapped in)."""
    from safetensors import SafetensorError

    out = Path(out)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        _write(model, tmp, tables or {}, index)
        _swap(tmp, out)
    except SafetensorError as err:  # safetensors reports a full disk or a read-only folder as its own error
        raise ModelError(f"{out}: cannot write the model ({err}); free some space or choose a writable --out") from None
    except OSError as err:
        raise ModelError(f"{out}: cannot write the model ({err.strerror or err}); "
                         "free some space or choose a writable --out") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write(model: PosterModel, out: Path, tables: dict[str, pd.DataFrame], index) -> None:
    if model.genre_model is not None:
        save_arrays(model.genre_model.to_arrays(), out / GENRE_FILE)
    if model.score_model is not None:
        save_arrays(model.score_model.to_arrays(), out / SCORE_FILE)
    for name, table in tables.items():
        table.to_csv(out / name, index=False)
    if index is not None:
        index.save(out)
    if model.text is not None:
        model.text.save(out)
    trust = {}
    for part in (model.domain, model.intervals):
        trust |= part.to_arrays() if part is not None else {}
    if trust:
        save_arrays(trust, out / TRUST_FILE)
    config = {
        "format": FORMAT,
        "posterlens_version": __version__,
        "backbones": [_backbone_entry(b, out) for b in model.features.backbones],
        "genres": model.genres,
        "genre_model": None if model.genre_model is None else
        {"class": model.genre_model.estimator, "params": model.genre_model.params},
        "score_mode": model.score_mode,
        "score_model": None if model.score_model is None else
        {"class": model.score_model.estimator, "params": model.score_model.params},
        "text_model": None if model.text is None else _text_entry(model.text),
        "trust": {"domain": model.domain is not None,
                  "intervals": None if model.intervals is None else model.intervals.kind},
        **model.info,
    }
    config["files"] = {p.name: sha256(p) for p in sorted(out.iterdir())}
    config["digest"] = _config_digest(config)
    (out / CONFIG).write_text(json.dumps(config, indent=2, default=_json_default))


def _text_entry(text: TextModel) -> dict:
    """How ``config.json`` names the text part (its arrays and vocabularies are in ``TEXT_FILES``)."""
    from dataclasses import asdict

    return {"class": "TextModel", "params": text.classifier.get_params(), "ocr": asdict(text.settings),
            "files": list(TEXT_FILES)}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _swap(new: Path, out: Path) -> None:
    """Put the directory ``new`` at ``out``; the old one (if any) is removed only once the new one is in place."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(new, out)
        return
    if not (out / CONFIG).is_file():
        raise ModelError(f"{out}: exists and is not a posterlens model directory; choose another --out")
    old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
    os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --- loading: validate, then build ----------------------------------------------------------

def _fail(path: Path, problem: str) -> ModelError:
    return ModelError(f"{path}: {problem}")


def read_config(model_dir: Path) -> dict:
    """``config.json`` after checking its digest, its schema and every file it lists."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG
    if path.is_symlink():  # a model is read from its own folder only
        raise ModelError(f"{path}: a link, not a file of the model directory")
    if not path.is_file():
        raise ModelError(f"{model_dir}: not a posterlens model directory (no {CONFIG})")
    if path.stat().st_size > 50_000_000:
        raise _fail(path, "too large to be a model configuration")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _fail(path, f"not valid JSON ({err})") from None
    except RecursionError:
        raise _fail(path, "nested too deep to be a model configuration") from None
    if not isinstance(config, dict):
        raise _fail(path, "not a JSON object")
    if config.get("format") != FORMAT:
        raise _fail(path, f"unsupported model format {config.get('format')!r} (expected {FORMAT}); retrain the model")
    if config.get("digest") != _config_digest(config):
        raise _fail(path, "digest mismatch: the file changed after training")
    _check_schema(config, path)
    for name, digest in config["files"].items():
        file = model_dir / name
        if not file.is_file() or file.is_symlink():
            raise ModelError(f"{file}: missing from the model directory")
        if sha256(file) != digest:
            raise ModelError(f"{file}: checksum mismatch, the file changed after training")
    return config


def _check_schema(config: dict, path: Path) -> None:
    """Types, names and ranges of everything ``load`` reads."""
    unknown = sorted(set(config) - _KNOWN - set(_INFO) - _LEGACY)
    if unknown:
        raise _fail(path, f"unknown key(s) {unknown}: a model directory holds only {sorted(_KNOWN | set(_INFO))}")
    for key, kind in _INFO.items():
        if key in config and not isinstance(config[key], kind):
            raise _fail(path, f"'{key}' has the wrong type ({type(config[key]).__name__})")
    files = config.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and _SAFE_NAME.match(k) and isinstance(v, str)
                                              for k, v in files.items()):
        raise _fail(path, "'files' must map plain file names to checksums")
    genres = config.get("genres")
    if config.get("genre_model") is None:  # a score-only model
        if genres != [] or config.get("score_model") is None:
            raise _fail(path, "a model without a genre model has no 'genres' ([]) and a score model")
    elif not (isinstance(genres, list) and len(genres) >= 2 and all(isinstance(g, str) and g for g in genres)
              and len(set(genres)) == len(genres)):
        raise _fail(path, "'genres' must be a list of 2 or more distinct names")
    entries = config.get("backbones")
    if not (isinstance(entries, list) and entries and all(isinstance(e, dict) for e in entries)):
        raise _fail(path, "'backbones' must be a non-empty list of objects")
    for entry in entries:
        _check_backbone(entry, files, path)
    if config.get("genre_model") is not None:
        _check_estimator(config["genre_model"], path, "genre_model", {"GenreClassifier"})
    if config.get("score_model") is not None:
        _check_estimator(config["score_model"], path, "score_model", {"ScoreRegressor", "ScoreClassifier"})
    if config.get("score_mode") not in ("regression", "classes", "none"):
        raise _fail(path, f"unknown score_mode {config.get('score_mode')!r}")
    if config.get("text_model") is not None:
        _check_text(config["text_model"], files, path)
    _check_trust(config.get("trust"), config, path)


def _check_trust(entry: Any, config: dict, path: Path) -> None:
    """``trust``: absent (models before 2026-12) or which parts ``TRUST_FILE`` holds."""
    if entry is None:
        return
    if not isinstance(entry, dict) or set(entry) != {"domain", "intervals"} or type(entry["domain"]) is not bool \
            or entry["intervals"] not in (None, "sigma", "set"):
        raise _fail(path, "'trust' must be {'domain': true|false, 'intervals': null|'sigma'|'set'}")
    if (entry["domain"] or entry["intervals"]) and TRUST_FILE not in config["files"]:
        raise _fail(path, f"'trust' names parts but {TRUST_FILE} is not listed in 'files'")
    if entry["intervals"] is not None and config.get("score_model") is None:
        raise _fail(path, "'trust' has score intervals but the model has no score model")


def _check_text(entry: Any, files: dict, path: Path) -> None:
    """``text_model``: its class, numeric params and OCR settings, and its two files listed and checksummed."""
    if not isinstance(entry, dict) or set(entry) != {"class", "params", "ocr", "files"}:
        raise _fail(path, "'text_model' must be null or {'class', 'params', 'ocr', 'files'}")
    _check_estimator(entry, path, "text_model", {"TextModel"})
    ocr = entry["ocr"]
    if not isinstance(ocr, dict) or set(ocr) != TEXT_OCR:
        raise _fail(path, f"'text_model.ocr' must give {sorted(TEXT_OCR)}")
    _check_numbers(ocr, path, "text_model.ocr")
    if entry["files"] != TEXT_FILES or not all(name in files for name in TEXT_FILES):
        raise _fail(path, f"'text_model.files' must be {TEXT_FILES}, each listed in 'files'")


def _check_backbone(entry: dict, files: dict, path: Path) -> None:
    name, weights = entry.get("name"), entry.get("weights")
    if set(entry) - {"name", "weights"} or not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise _fail(path, f"backbone {entry!r}: expected {{'name': <registered or timm name>, 'weights'?: <file>}}")
    if weights is None:
        if name not in backbones.REGISTRY:
            raise _fail(path, f"backbone {name!r} is not registered and names no weights file")
        return
    if weights != "timm-hub" and (not isinstance(weights, str) or weights not in files):
        raise _fail(path, f"backbone {name!r}: weights must be a file listed in the model directory")


_PARAM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")  # C: TextGenreClassifier's, as scikit-learn names it


def _check_estimator(entry: Any, path: Path, key: str, classes: set[str]) -> None:
    """The estimator's class and parameters: plain names with numbers or booleans in [0, 1e6].

    (The estimators' own signatures are not consulted: that would import scikit-learn,
    which predicting does not need; each head reads the few parameters it uses.)
    """
    if not isinstance(entry, dict) or entry.get("class") not in classes or not isinstance(entry.get("params"), dict):
        raise _fail(path, f"'{key}' must name one of {sorted(classes)} with its params")
    _check_numbers(entry["params"], path, key)


def _check_numbers(params: dict, path: Path, key: str) -> None:
    """Plain names with numbers or booleans in [0, 1e6]."""
    for name, value in params.items():
        if not (isinstance(name, str) and _PARAM_NAME.match(name)):
            raise _fail(path, f"'{key}': {name!r} is not a parameter name")
        if type(value) not in (bool, int, float):
            raise _fail(path, f"'{key}.{name}' must be a number or a boolean (got {value!r})")
        if not isinstance(value, bool) and not 0 <= value <= 1e6:
            raise _fail(path, f"'{key}.{name}' = {value!r} is out of range")


def _backbone(entry: dict, model_dir: Path) -> backbones.Backbone:
    weights = entry.get("weights")
    if weights is None:
        return backbones.REGISTRY[entry["name"]]
    if weights == "timm-hub":
        return backbones.resolve(entry["name"])
    return backbones.resolve(entry["name"], model_dir / weights)


def _load_arrays(file: Path) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file, each checked numeric and finite (a NaN weight or an
    infinite threshold would predict nonsense silently)."""
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(file))
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise ModelError(f"{file}: not a readable safetensors file ({err})") from None
    for name, array in arrays.items():
        if array.dtype.kind not in "fiu" or (array.dtype.kind == "f" and not np.isfinite(array).all()):
            raise ModelError(f"{file}: '{name}' holds values that are not finite numbers; retrain the model")
    return arrays


def _head(entry: dict, file: Path):
    try:
        return HEADS[entry["class"]].from_arrays(_load_arrays(file), entry["params"])
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError, ZeroDivisionError) as err:
        raise ModelError(f"{file}: does not fit its configuration ({type(err).__name__}: {err})") from None


def load(model_dir: Path) -> PosterModel:
    """Read a model directory written by ``save`` (safetensors + JSON only, validated first)."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    try:
        spec = FeatureSpec(tuple(_backbone(e, model_dir) for e in config["backbones"]))
    except BackboneError as err:
        raise ModelError(f"{model_dir / CONFIG}: {err}") from None
    genre_model = None if config["genre_model"] is None else _head(config["genre_model"], model_dir / GENRE_FILE)
    score_model = None
    if config["score_model"] is not None:
        score_model = _head(config["score_model"], model_dir / SCORE_FILE)
    n = len(config["genres"])
    if genre_model is not None and (genre_model.n_features_in_ != spec.feature_dim or len(genre_model.scale) != n
                                    or len(genre_model.thresholds_) != n):
        raise _fail(model_dir / GENRE_FILE, f"shapes do not fit {spec.feature_dim} features and {n} genres")
    if score_model is not None and score_model.n_features_in_ != spec.feature_dim:
        raise _fail(model_dir / SCORE_FILE, f"expects {score_model.n_features_in_} features, the backbones give {spec.feature_dim}")
    text = None if config.get("text_model") is None else _text(config["text_model"], model_dir, config["genres"])
    domain, intervals = _trust(config.get("trust"), model_dir, spec.feature_dim, score_model)
    return PosterModel(spec, list(config["genres"]), genre_model, score_model, config["score_mode"],
                       {k: v for k, v in config.items() if k in _INFO}, text=text, domain=domain, intervals=intervals)


def _trust(entry: dict | None, model_dir: Path, feature_dim: int, score_model) -> tuple[DomainHead | None, ScoreIntervals | None]:
    """The domain head and score intervals ``trust`` names, checked against the features and the score model."""
    if entry is None or not (entry["domain"] or entry["intervals"]):
        return None, None
    file = model_dir / TRUST_FILE
    axes = score_model.arrays["pca.components_"].shape[0] if isinstance(score_model, ScoreHead) else None
    try:
        return trust_parts(_load_arrays(file), entry["domain"], entry["intervals"], feature_dim, axes)
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise ModelError(f"{file}: does not fit its configuration ({type(err).__name__}: {err})") from None


def _text(entry: dict, model_dir: Path, genres: list[str]) -> TextModel:
    """The text part (imports scikit-learn: only models trained with --text have one)."""
    from dataclasses import asdict

    from posterlens.models.text import TextModel

    try:
        text = TextModel.load(model_dir, genres)
    except TextModelError as err:
        raise ModelError(str(err)) from None
    if text.classifier.get_params() != entry["params"] or asdict(text.settings) != entry["ocr"]:
        raise _fail(model_dir / CONFIG, "'text_model' does not match text_model.json")
    return text
