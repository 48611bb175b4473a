"""The text stage of a model trained with ``--text``: a text genre model fused with the image model.

- ``TextGenreClassifier``: TF-IDF word and character n-grams -> one logistic regression a
  genre, with the scikit-learn contract; saved as safetensors (idf, weights) + JSON
  (vocabularies, parameters), never pickle.
- ``TextFusion``: per genre, a logistic regression on the image model's and the text model's
  logits, fitted on out-of-fold probabilities of both, then the label rule on the fused
  out-of-fold probabilities. Posters with no text get what the image model says through the
  same fusion (the text model's logit for an empty text is its intercept).
- ``TextScore``: a ridge on the same TF-IDF features predicts the score, stacked with the image
  score model on out-of-fold predictions of both.

The posters' text itself is read by ``features.ocr``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from posterlens.errors import TextModelError
from posterlens.features.ocr import OcrSettings
from posterlens.models.directory import TEXT_FILES
from posterlens.models.fitted import RULE_DEFAULTS, LabelRule, save_arrays, sigmoid
from posterlens.safeio import write_json

__all__ = ["TEXT_MODEL_FILE", "TEXT_MODEL_JSON", "TEXT_FILES", "TextGenreClassifier", "TextFusion", "TextScore",
           "TextModel", "TextModelError"]

TEXT_MODEL_FILE, TEXT_MODEL_JSON = TEXT_FILES  # what a text model adds to a model directory


# --- the text genre model -------------------------------------------------------------------------

def _vectorisers(params: dict, vocabularies: tuple[list[str], list[str]] | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    word_vocab, char_vocab = vocabularies or (None, None)
    word = TfidfVectorizer(analyzer="word", ngram_range=(1, params["word_max_n"]), min_df=params["min_df"],
                           sublinear_tf=True, vocabulary=word_vocab, dtype=np.float32)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(params["char_min_n"], params["char_max_n"]),
                           min_df=params["min_df"], max_features=params["char_features"], sublinear_tf=True,
                           vocabulary=char_vocab, dtype=np.float32)
    return word, char


class TextGenreClassifier(ClassifierMixin, BaseEstimator):
    """Genres from poster text: TF-IDF word (1..``word_max_n``) and character
    (``char_min_n``..``char_max_n``, within words) n-grams -> a balanced logistic regression a genre.

    ``fit(texts, Y)`` takes strings (an empty string for a poster without text) and a 0/1 matrix.
    """

    def __init__(self, C: float = 0.3, word_max_n: int = 2, char_min_n: int = 2, char_max_n: int = 5,
                 min_df: int = 2, char_features: int = 100_000):
        self.C, self.word_max_n, self.char_min_n, self.char_max_n = C, word_max_n, char_min_n, char_max_n
        self.min_df, self.char_features = min_df, char_features

    def _matrix(self, texts: Sequence[str]):
        from scipy.sparse import hstack

        texts = [t or "" for t in texts]
        return hstack([self.word_.transform(texts), self.char_.transform(texts)]).tocsr()

    def fit_vocabulary(self, texts: Sequence[str]) -> "TextGenreClassifier":
        """Fit the TF-IDF vectorisers alone (``fit`` starts with this; ``TextScore`` uses it on its folds)."""
        self.word_, self.char_ = _vectorisers(self.get_params())
        texts = [t or "" for t in texts]
        try:
            self.word_.fit(texts)
        except ValueError:  # no word occurs min_df times (tiny or textless training sets)
            self.word_ = _vectorisers(self.get_params(), (["\x00"], ["\x00"]))[0].fit(texts)
        try:
            self.char_.fit(texts)
        except ValueError:
            self.char_ = _vectorisers(self.get_params(), (["\x00"], ["\x00"]))[1].fit(texts)
        return self

    def fit(self, texts: Sequence[str], Y: np.ndarray) -> "TextGenreClassifier":
        from sklearn.linear_model import LogisticRegression

        Y = np.asarray(Y, dtype=np.float32)
        texts = [t or "" for t in texts]
        A = self.fit_vocabulary(texts)._matrix(texts)
        self.coef_ = np.zeros((Y.shape[1], A.shape[1]), dtype=np.float32)
        self.intercept_ = np.zeros(Y.shape[1], dtype=np.float32)
        for j in range(Y.shape[1]):
            if 0 < Y[:, j].sum() < len(Y):
                lr = LogisticRegression(C=self.C, class_weight="balanced", solver="liblinear", max_iter=2000).fit(A, Y[:, j])
                self.coef_[j], self.intercept_[j] = lr.coef_[0], lr.intercept_[0]
            else:
                self.intercept_[j] = 10.0 if Y[:, j].any() else -10.0
        self.n_genres_ = Y.shape[1]
        return self

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._matrix(texts) @ self.coef_.T, dtype=np.float32) + self.intercept_

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return sigmoid(self.decision_function(texts))

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return (self.predict_proba(texts) >= 0.5).astype(np.float32)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays for safetensors, vocabularies for JSON)."""
        arrays = {"word_idf": self.word_.idf_.astype(np.float32), "char_idf": self.char_.idf_.astype(np.float32),
                  "coef": self.coef_, "intercept": self.intercept_}
        vocab = {name: sorted(v.vocabulary_, key=v.vocabulary_.get) for name, v in (("word", self.word_), ("char", self.char_))}
        return arrays, vocab

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], vocab: dict, params: dict) -> "TextGenreClassifier":
        clf = cls(**params)
        clf.word_, clf.char_ = _vectorisers(clf.get_params(), (vocab["word"], vocab["char"]))
        for vec, idf in ((clf.word_, arrays["word_idf"]), (clf.char_, arrays["char_idf"])):
            vec.idf_ = idf  # checks the length against the vocabulary
        clf.coef_, clf.intercept_ = arrays["coef"], arrays["intercept"]
        clf.n_genres_ = len(clf.intercept_)
        return clf


# --- fusion -----------------------------------------------------------------------------------------

def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


class TextFusion:
    """Per genre ``sigmoid(a * logit(p_image) + b * logit(p_text) + c)``, then the label rule.

    Fitted on out-of-fold probabilities of both models, so neither is trusted more than
    it earned on posters it did not see.
    """

    def __init__(self, max_labels: int = RULE_DEFAULTS["max_labels"], rank_power: float = RULE_DEFAULTS["rank_power"],
                 threshold_scale: float = RULE_DEFAULTS["threshold_scale"]):
        self.rule_ = LabelRule(max_labels, rank_power, threshold_scale)

    def fit(self, P_image: np.ndarray, P_text: np.ndarray, Y: np.ndarray) -> "TextFusion":
        from sklearn.linear_model import LogisticRegression

        n = Y.shape[1]
        self.weights_, self.bias_ = np.zeros((n, 2), np.float32), np.zeros(n, np.float32)
        self.weights_[:, 0] = 1.0  # a genre all or none of the posters have: the image model as it is
        for j in range(n):
            if 0 < Y[:, j].sum() < len(Y):
                lr = LogisticRegression(C=1.0).fit(np.c_[_logit(P_image[:, j]), _logit(P_text[:, j])], Y[:, j])
                self.weights_[j], self.bias_[j] = lr.coef_[0], lr.intercept_[0]
        self.rule_.fit(Y, self.predict_proba(P_image, P_text))
        return self

    def predict_proba(self, P_image: np.ndarray, P_text: np.ndarray) -> np.ndarray:
        z = _logit(P_image) * self.weights_[:, 0] + _logit(P_text) * self.weights_[:, 1] + self.bias_
        return sigmoid(z).astype(np.float32)

    def labels(self, P: np.ndarray) -> np.ndarray:
        return self.rule_.predict(P)


class TextScore:
    """The score from poster text, stacked with the image score model's.

    A ridge (``alpha``) on the text genre model's TF-IDF features predicts the score; ``stack_``
    (image weight, text weight, intercept) is a linear regression on out-of-fold predictions of
    both, so the text counts as much as it earned on posters it did not see. In 5-fold CV on the
    development set: Spearman 0.373 -> 0.431, MAE 0.753 -> 0.730 (docs/text.md).
    """

    def __init__(self, alpha: float = 10.0):
        self.alpha = alpha

    def _ridge(self, A, y: np.ndarray) -> tuple[np.ndarray, float]:
        from sklearn.linear_model import Ridge

        mean = float(y.mean())
        ridge = Ridge(alpha=self.alpha).fit(A, y - mean)
        return ridge.coef_.astype(np.float32), float(ridge.intercept_) + mean

    def fit(self, classifier: TextGenreClassifier, texts: Sequence[str], y: np.ndarray, image_oof: np.ndarray,
            folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> "TextScore":
        """``classifier``: the fitted text genre model (its vocabulary); ``image_oof``: the image score
        model's out-of-fold predictions over ``folds``, on which the text ridge is refitted likewise."""
        from sklearn.linear_model import LinearRegression

        texts = np.array([t or "" for t in texts], dtype=object)
        y = np.asarray(y, dtype=np.float64)
        text_oof = np.zeros(len(y))
        for train, valid in folds:
            fold = TextGenreClassifier(**classifier.get_params()).fit_vocabulary(texts[train])
            coef, intercept = self._ridge(fold._matrix(texts[train]), y[train])
            text_oof[valid] = fold._matrix(texts[valid]) @ coef + intercept
        stack = LinearRegression().fit(np.c_[image_oof, text_oof], y)
        self.stack_ = np.array([*stack.coef_, stack.intercept_], dtype=np.float32)
        self.coef_, intercept = self._ridge(classifier._matrix(texts), y)
        self.intercept_ = np.array([intercept], dtype=np.float32)
        return self

    def predict(self, classifier: TextGenreClassifier, image_score: np.ndarray, texts: Sequence[str | None]) -> np.ndarray:
        """The stacked score; a poster whose text is ``None`` (not read) keeps ``image_score``."""
        text_score = classifier._matrix([t or "" for t in texts]) @ self.coef_ + self.intercept_[0]
        fused = self.stack_[0] * image_score + self.stack_[1] * text_score + self.stack_[2]
        missing = np.array([t is None for t in texts], dtype=bool)
        return np.where(missing, image_score, fused).astype(np.float32)


# --- what --text adds to a model directory -------------------------------------------------------

TEXT_FORMAT = 1


@dataclass
class TextModel:
    """The text stage of a model trained with ``--text``: how posters are read, the text genre
    model, and its fusion with the image model's probabilities."""

    settings: OcrSettings
    genres: list[str]
    classifier: TextGenreClassifier
    fusion: TextFusion
    score: TextScore | None = None  # None: no score model to stack with (``fit_score``)

    @classmethod
    def fit(cls, texts: Sequence[str], Y: np.ndarray, image_oof_proba: np.ndarray,
            folds: Sequence[tuple[np.ndarray, np.ndarray]], genres: list[str],
            settings: OcrSettings = OcrSettings(), rule: dict | None = None,
            oof_rows: np.ndarray | None = None, **params) -> "TextModel":
        """Fit on every poster; ``image_oof_proba`` are the image model's out-of-fold probabilities
        (``GenreClassifier.oof_proba_``) for the rows ``oof_rows`` (``oof_rows_``; default: every
        row) and ``folds`` the folds they came from, which give the text model's own out-of-fold
        probabilities for the fusion, fitted on those rows."""
        texts = np.array([t or "" for t in texts], dtype=object)
        Y = np.asarray(Y, dtype=np.float32)
        rows = np.arange(len(Y)) if oof_rows is None else np.asarray(oof_rows)
        wanted = np.zeros(len(Y), dtype=bool)
        wanted[rows] = True
        oof = np.zeros(Y.shape, dtype=np.float32)
        for train, valid in folds:
            if wanted[valid].any():  # the image model stops at calibration_posters: so does the text model
                oof[valid] = TextGenreClassifier(**params).fit(texts[train], Y[train]).predict_proba(texts[valid])
        fusion = TextFusion(**(rule or {})).fit(image_oof_proba, oof[rows], Y[rows])
        return cls(settings, list(genres), TextGenreClassifier(**params).fit(texts, Y), fusion)

    @classmethod
    def fit_beside(cls, image_model, texts: Sequence[str | None], Y: np.ndarray, genres: list[str],
                   settings: OcrSettings = OcrSettings(), **params) -> "TextModel":
        """``fit`` next to a fitted ``GenreClassifier`` on the same rows: its calibration folds,
        out-of-fold probabilities and label rule settings."""
        folds = image_model.calibration_splits_
        rule = {k: getattr(image_model, k) for k in RULE_DEFAULTS}
        return cls.fit(texts, Y, image_model.oof_proba_, folds, genres, settings, rule, image_model.oof_rows_, **params)

    def fit_score(self, texts: Sequence[str | None], y: np.ndarray, image_oof: np.ndarray,
                  folds: Sequence[tuple[np.ndarray, np.ndarray]], alpha: float = 10.0) -> "TextModel":
        """Stack a text score model with the image one (``TextScore``) on the posters with a score."""
        self.score = TextScore(alpha).fit(self.classifier, texts, y, image_oof, folds)
        return self

    def predict_score(self, image_score: np.ndarray, texts: Sequence[str | None]) -> np.ndarray:
        """The score with the text stacked in (``image_score`` as it is without a score part)."""
        return image_score if self.score is None else self.score.predict(self.classifier, image_score, texts)

    def predict_proba(self, P_image: np.ndarray, texts: Sequence[str | None]) -> np.ndarray:
        """Fused genre probabilities; a poster whose text is ``None`` (not read) keeps ``P_image``."""
        P = self.fusion.predict_proba(P_image, self.classifier.predict_proba([t or "" for t in texts]))
        missing = np.array([t is None for t in texts], dtype=bool)
        P[missing] = P_image[missing]
        return P

    def labels(self, P: np.ndarray) -> np.ndarray:
        return self.fusion.labels(P)

    def save(self, folder: Path) -> list[Path]:
        """``text_model.safetensors`` (idf, weights, fusion) and ``text_model.json`` (settings, vocabularies)."""
        arrays, vocabulary = self.classifier.to_arrays()
        arrays.update({"fusion.weights": self.fusion.weights_, "fusion.bias": self.fusion.bias_,
                       "fusion.thresholds": self.fusion.rule_.thresholds_})
        if self.score is not None:
            arrays.update({"score.coef": self.score.coef_, "score.intercept": self.score.intercept_,
                           "score.stack": self.score.stack_})
        save_arrays(arrays, Path(folder) / TEXT_MODEL_FILE)
        rule = {k: getattr(self.fusion.rule_, k) for k in RULE_DEFAULTS}
        write_json(Path(folder) / TEXT_MODEL_JSON, {
            "format": TEXT_FORMAT, "ocr": asdict(self.settings), "ocr_key": self.settings.key, "genres": self.genres,
            "classifier": {"class": "TextGenreClassifier", "params": self.classifier.get_params()},
            "rule": rule, "score": None if self.score is None else {"alpha": self.score.alpha},
            "vocabulary": vocabulary})
        return [Path(folder) / TEXT_MODEL_FILE, Path(folder) / TEXT_MODEL_JSON]

    @classmethod
    def load(cls, folder: Path, genres: list[str] | None = None) -> "TextModel":
        """Read what ``save`` wrote, checked: known settings of the right types, shapes that fit."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta_path, arrays_path = folder / TEXT_MODEL_JSON, folder / TEXT_MODEL_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            arrays = load_file(str(arrays_path))
        except Exception as err:  # noqa: BLE001  safetensors raises its own error types for a damaged header
            raise TextModelError(f"{folder}: cannot read the text model ({err})") from None
        try:
            if meta.get("format") != TEXT_FORMAT or meta["classifier"]["class"] != "TextGenreClassifier":
                raise ValueError(f"unknown format {meta.get('format')!r}")
            settings = OcrSettings(**_typed(meta["ocr"], asdict(OcrSettings())))
            params = _typed(meta["classifier"]["params"], TextGenreClassifier().get_params())
            rule = _typed(meta["rule"], RULE_DEFAULTS)
            names = [str(g) for g in meta["genres"]]
            if genres is not None and names != list(genres):
                raise ValueError("its genres are not the model's")
            vocab = {k: [str(t) for t in meta["vocabulary"][k]] for k in ("word", "char")}
            n, d = len(names), len(vocab["word"]) + len(vocab["char"])
            expected = {"coef": (n, d), "intercept": (n,), "word_idf": (len(vocab["word"]),),
                        "char_idf": (len(vocab["char"]),), "fusion.weights": (n, 2), "fusion.bias": (n,),
                        "fusion.thresholds": (n,)}
            score = meta.get("score")  # absent in text models written before the score part
            if score is not None:
                score = _typed(score, {"alpha": 10.0})
                expected.update({"score.coef": (d,), "score.intercept": (1,), "score.stack": (3,)})
            for key, shape in expected.items():
                if arrays[key].shape != shape or arrays[key].dtype.kind != "f" or not np.isfinite(arrays[key]).all():
                    raise ValueError(f"{key}: shape {arrays[key].shape} {arrays[key].dtype}, expected {shape} finite floats")
                if np.abs(arrays[key]).max(initial=0) > MAX_WEIGHT:
                    raise ValueError(f"{key}: values over {MAX_WEIGHT:g} are no fitted weights")
            _consistent(params, rule, score, vocab, arrays["fusion.thresholds"])
        except (KeyError, TypeError, ValueError) as err:
            raise TextModelError(f"{folder}: text model does not fit ({err})") from None
        fusion = TextFusion(**rule)
        fusion.weights_, fusion.bias_ = arrays["fusion.weights"], arrays["fusion.bias"]
        fusion.rule_.thresholds_ = arrays["fusion.thresholds"]
        model = cls(settings, names, TextGenreClassifier.from_arrays(arrays, vocab, params), fusion)
        if score is not None:
            model.score = TextScore(**score)
            model.score.coef_, model.score.intercept_ = arrays["score.coef"], arrays["score.intercept"]
            model.score.stack_ = arrays["score.stack"]
        return model


MAX_WEIGHT = 1e6  # a fitted weight, idf or bias larger than this is damage, not learning


def _consistent(params: dict, rule: dict, score: dict | None, vocab: dict, thresholds: np.ndarray) -> None:
    """Settings that are each in range but must also agree (``ValueError`` naming the first that does not)."""
    if not 1 <= params["char_min_n"] <= params["char_max_n"]:
        raise ValueError(f"char_min_n {params['char_min_n']} and char_max_n {params['char_max_n']}: need 1 <= min <= max")
    if params["word_max_n"] < 1 or params["min_df"] < 1 or params["char_features"] < 1 or not params["C"] > 0:
        raise ValueError("word_max_n, min_df and char_features must be 1 or more, C positive")
    if not (rule["max_labels"] >= 1 and rule["rank_power"] >= 0 and rule["threshold_scale"] > 0):
        raise ValueError(f"rule {rule}: max_labels >= 1, rank_power >= 0, threshold_scale > 0")
    if score is not None and not score["alpha"] > 0:
        raise ValueError(f"score alpha {score['alpha']}: must be positive")
    if not ((thresholds > 0) & (thresholds <= 1)).all():
        raise ValueError("fusion.thresholds must be probabilities in (0, 1]")
    for name, words in vocab.items():
        if len(set(words)) != len(words) or not all(words):
            raise ValueError(f"the {name} vocabulary has an empty or repeated entry")


def _typed(given: dict, defaults: dict) -> dict:
    """``given`` with only the keys of ``defaults``, each of the default's type (int or float)."""
    if not isinstance(given, dict):
        raise ValueError(f"settings must be an object, not {type(given).__name__}")
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}")
    out = {}
    for key, value in given.items():
        kind = type(defaults[key])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ValueError(f"{key}: {value!r} is not a {kind.__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{key}: {value!r} is not a finite number")
        out[key] = kind(value)
    return out
