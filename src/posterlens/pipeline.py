"""The main job end to end on the bundled sample, as run by ``make demo``."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "sample"
DEMO_MIN_GENRE_COUNT = 10  # the sample has 240 posters: keep genres with 10+ training posters


def sample_catalog() -> Path:
    """The bundled sample's ``MovieGenre.csv`` (its posters are in ``images/`` beside it)."""
    path = SAMPLE_DIR / "MovieGenre.csv"
    if not path.is_file():
        raise FileNotFoundError(f"bundled sample not found at {path} (run from a clone of the repo)")
    return path


def demo(out: Path, cache: Path | None = None) -> None:
    """Embed the sample, train both models, evaluate on the held-out posters, report."""
    from posterlens import evaluate, predict, train

    console = Console()
    cache = cache or out / "cache"
    console.rule("1. train (embeddings cached in %s)" % cache)
    config = train.TrainConfig(min_genre_count=DEMO_MIN_GENRE_COUNT)
    result = train.train(sample_catalog(), None, out / "model", config, cache)
    model = result.model
    console.print(f"{len(model.genres)} genres, trained on {model.info['n_train']} posters in "
                  f"{result.seconds['total']:.1f} s -> {result.model_dir}")
    console.rule("2. evaluate on the %d held-out posters" % len(model.info["holdout_ids"]))
    evaluation = evaluate.evaluate(result.model_dir, sample_catalog(), None, out / "report", cache)
    genre, score = evaluation.metrics["genre"], evaluation.metrics["score"]
    base = genre["baselines"]["top2_constant"]
    console.print(f"genres: macro-mAP {genre['macro_map']:.3f}, micro-F1 {genre['micro_f1']:.3f} "
                  f"(top-2 constant baseline: {base['macro_map']:.3f}, {base['micro_f1']:.3f})")
    console.print(f"score: MAE {score['mae']:.3f} (predicting the mean: {score['baseline_mae']:.3f})")
    console.print(f"[bold]report: {evaluation.report}[/bold]")
    console.rule("3. predict held-out posters, and find similar movies")
    predictor = predict.load(result.model_dir, cache)
    posters = [SAMPLE_DIR / "images" / f"{i}.jpg" for i in model.info["holdout_ids"][:6]]
    predictions = predictor.predict(posters, similar=3)
    written = predict.write(predictions, out / "predictions")
    for row in predictions.table.itertuples():
        console.print(f"{Path(row.file).name}: score {row.score:.1f}, genres {'|'.join(row.genres) or '-'}")
    console.print(f"CSV files: {', '.join(str(p) for p in written.values())}")
    found = predictor.similar(posters[0], k=5)
    console.print(f"movies similar to {posters[0].name}:")
    console.print(found.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
