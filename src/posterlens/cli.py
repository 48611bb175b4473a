"""The ``posterlens`` command line: a thin shell over the package's functions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from enum import StrEnum

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from posterlens.backbones import DEFAULT_FEATURES, BackboneError
from posterlens.catalog import CatalogError
from posterlens.features import ENGINES, default_cache_dir
from posterlens.images import PosterError
from posterlens.safeio import OutputError

app = typer.Typer(help="Read a movie from its poster: genres, IMDb-style score, similar movies.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(stderr=True)

CatalogOpt = typer.Option(..., "--catalog", help="MovieGenre.csv, multi-label CSV, or a folder of Title_8.8.jpg posters")
ImagesOpt = typer.Option(None, "--images", help="folder with the posters (default: images/ next to the catalogue)")
CacheOpt = typer.Option(None, "--cache", help="feature cache folder (default: $POSTERLENS_CACHE or ~/.cache/posterlens)")
BackboneOpt = typer.Option(None, "--backbone", help=f"registered backbone or timm model name; repeat to concatenate "
                           f"(default: {' + '.join(DEFAULT_FEATURES)})")
WeightsOpt = typer.Option(None, "--weights", help="weights file for a single backbone without offline weights")
Engine = StrEnum("Engine", ENGINES)
ScoreMode = StrEnum("ScoreMode", ["regression", "classes"])
EngineOpt = typer.Option(Engine.auto, "--engine", help="auto: OpenVINO where installed, else ONNX Runtime")


def _backbones(names: Optional[list[str]]) -> list[str]:
    """``--backbone`` values (repeated, or joined by '+'), or the default features."""
    return [n for name in names for n in name.split("+") if n] if names else list(DEFAULT_FEATURES)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="more log output")) -> None:
    """Set up logging for every command."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])


def _fail(err: Exception) -> None:
    """One line, exit code 2: bad input, named."""
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(code=2)


@app.command()
def embed(
    catalog: Path = CatalogOpt,
    images: Optional[Path] = ImagesOpt,
    backbone: Optional[list[str]] = BackboneOpt,
    weights: Optional[Path] = WeightsOpt,
    cache: Optional[Path] = CacheOpt,
    engine: Engine = EngineOpt,
    batch_size: int = typer.Option(8, min=1, max=1024, help="posters per forward pass"),
) -> None:
    """Embed every poster of a catalogue with pretrained backbones (cached on disk)."""
    from posterlens import catalog as catalogs, features
    from posterlens.train import TrainConfig, TrainError

    cache = cache or default_cache_dir()
    try:
        table = catalogs.read_catalog(catalog, images)
        spec = TrainConfig(backbones=_backbones(backbone), weights=str(weights) if weights else None).feature_spec()
        result = features.embed(table["path"].tolist(), spec, cache, engine=engine.value, batch_size=batch_size)
    except (CatalogError, BackboneError, TrainError, OutputError) as err:
        _fail(err)
    summary = Table(title=f"embeddings: {spec.name} ({spec.feature_dim} dims)")
    for column in ("posters", "computed", "from cache", "failed", "seconds", "posters/s"):
        summary.add_column(column, justify="right")
    summary.add_row(str(len(table)), str(result.computed), str(result.cached), str(len(result.errors)),
                    f"{result.seconds:.1f}", f"{len(table) / max(result.seconds, 1e-9):.1f}")
    Console().print(summary)


@app.command()
def fetch(
    catalog: Path = CatalogOpt,
    out: Path = typer.Option(..., "--out", help="folder to download the posters into"),
    concurrency: int = typer.Option(16, help="parallel connections"),
    retries: int = typer.Option(3, help="extra attempts on timeouts, connection errors, 429 and 5xx"),
    timeout: float = typer.Option(20.0, help="seconds per request"),
    max_bytes: int = typer.Option(10_000_000, help="largest poster accepted, in bytes"),
    limit: Optional[int] = typer.Option(None, help="at most this many posters (after --sample)"),
    sample: Optional[str] = typer.Option(None, help="per-genre:K or random:N"),
    seed: int = typer.Option(42, help="seed for --sample"),
    allow_private_hosts: bool = typer.Option(False, "--allow-private-hosts",
                                             help="also download from loopback and private addresses"),
) -> None:
    """Download the catalogue's posters: concurrent, validated, resumable (manifest.csv)."""
    from posterlens import catalog as catalogs
    from posterlens.fetch import FetchConfig, fetch_posters, select

    try:
        table = catalogs.read_catalog(catalog, out, require_posters=False)
        config = FetchConfig(concurrency=concurrency, retries=retries, timeout=timeout, max_bytes=max_bytes,
                             allow_private_hosts=allow_private_hosts)
        summary = fetch_posters(select(table, limit, sample, seed), out, config)
    except (CatalogError, OutputError, ValueError) as err:
        _fail(err)
    view = Table(title=f"fetch: {out}")
    view.add_column("status")
    view.add_column("posters", justify="right")
    for status, count in sorted(summary.counts.items(), key=lambda kv: -kv[1]):
        view.add_row(status, str(count))
    Console().print(view)
    console.print(f"manifest: {summary.manifest}")
    if summary.n_ok == 0:
        raise typer.Exit(code=1)


@app.command()
def train(
    catalog: Path = CatalogOpt,
    images: Optional[Path] = ImagesOpt,
    out: Path = typer.Option(..., "--out", help="model directory to write (replaced only once the new one is complete)"),
    backbone: Optional[list[str]] = BackboneOpt,
    weights: Optional[Path] = WeightsOpt,
    epochs: Optional[int] = typer.Option(None, min=1, help="fit_one_cycle epochs of the genre network (default: GenreClassifier's)"),
    folds: int = typer.Option(0, min=0, help="K-fold cross-validation (mean ± std) instead of one holdout"),
    holdout: float = typer.Option(0.2, min=0.0, max=0.95, help="share held out for validation when --folds is 0"),
    refit: bool = typer.Option(True, "--refit/--no-refit", help="after validating, refit on every poster (--no-refit keeps the holdout out)"),
    seed: int = typer.Option(42, help="random seed for splits and training"),
    score_mode: ScoreMode = typer.Option(ScoreMode.regression, help="regression, or classes (each distinct score a class)"),
    min_genre_count: int = typer.Option(20, min=1, help="leave out genres with fewer training posters"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Train the genre and score models on poster embeddings and write a model directory."""
    from posterlens.model import ModelError
    from posterlens.train import TrainConfig, TrainError, train as run

    cache = cache or default_cache_dir()
    try:
        config = TrainConfig(backbones=_backbones(backbone), weights=str(weights) if weights else None, folds=folds,
                             holdout=holdout, refit=refit, seed=seed, score_mode=score_mode.value,
                             min_genre_count=min_genre_count, genre={"epochs": epochs} if epochs else {})
        result = run(catalog, images, out, config, cache)
    except (CatalogError, BackboneError, TrainError, ModelError, OutputError) as err:
        _fail(err)
    model = result.model
    console.print(f"model: [bold]{out}[/bold] ({len(model.genres)} genres, score: {model.score_mode}, "
                  f"trained on {model.info['n_train']} posters; validated on {model.info['evaluated_on']})")
    console.print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    if result.validation:
        _print_validation(result.validation)


def _print_validation(validation: dict) -> None:
    """Headline figures: mean ± std for cross-validation, one value for a holdout."""
    def show(value) -> str:
        return f"{value['mean']:.3f} ± {value['std']:.3f}" if isinstance(value, dict) else f"{value:.3f}"

    table = Table(title=f"validation: {validation['method']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for group, names in (("genre", ("macro_map", "macro_f1", "micro_f1", "samples_f1", "macro_roc_auc",
                                    "genres_per_poster", "true_genres_per_poster")),
                         ("score", ("mae", "baseline_mae", "spearman"))):
        for name in names:
            if name in (validation.get(group) or {}):
                table.add_row(f"{group} {name}", show(validation[group][name]))
    Console().print(table)


@app.command()
def evaluate(
    model: Path = typer.Option(..., "--model", help="model directory from `posterlens train`"),
    catalog: Path = CatalogOpt,
    images: Optional[Path] = ImagesOpt,
    out: Path = typer.Option(..., "--out", help="report directory to write"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Evaluate a model on the catalogue's posters it never saw: metrics.json, figures, report.html."""
    from posterlens.evaluate import EvaluationError, evaluate as run
    from posterlens.model import ModelError

    cache = cache or default_cache_dir()
    try:
        result = run(model, catalog, images, out, cache)
    except (CatalogError, ModelError, EvaluationError, OutputError) as err:
        _fail(err)
    _print_metrics(result.metrics)
    console.print(f"report: [bold]{result.report}[/bold]")


def _print_metrics(metrics: dict) -> None:
    genre = metrics["genre"]
    base = genre["baselines"]
    table = Table(title=f"{metrics['n_posters']} unseen posters, {metrics['n_genres']} genres")
    for column in ("metric", "model", "top-2 constant", "priors"):
        table.add_column(column, justify="right")
    for name in ("macro_map", "macro_f1", "micro_f1", "macro_roc_auc", "binary_accuracy", "hamming_loss", "ece"):
        table.add_row(name, f"{genre[name]:.4f}", f"{base['top2_constant'][name]:.4f}", f"{base['priors'][name]:.4f}")
    if metrics.get("score"):
        score = metrics["score"]
        table.add_row("score MAE", f"{score['mae']:.4f}", "", f"{score['baseline_mae']:.4f} (mean)")
        table.add_row("score Spearman", f"{score['spearman']:.4f}", "", "")
    Console().print(table)


ModelOpt = typer.Option(..., "--model", help="model directory from `posterlens train`")
SUMMARY_ROWS = 20  # predict prints a table for up to this many posters


@app.command()
def predict(
    files: Optional[list[Path]] = typer.Argument(None, help="poster files (or use --images / --catalog)"),
    model: Path = ModelOpt,
    images: Optional[Path] = typer.Option(None, "--images", help="folder of posters (all files), or with --catalog"),
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="predict the catalogue's posters"),
    out: Path = typer.Option(..., "--out", help="folder for the prediction CSV files"),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="average each poster with its mirror image"),
    similar: int = typer.Option(0, "--similar", min=0, max=1000, help="add the K most similar training movies"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Predict genres and score for many posters: predictions_{score,genre,final}.csv and errors.csv."""
    from posterlens import catalog as catalogs, predict as predicting
    from posterlens.model import ModelError

    cache = cache or default_cache_dir()
    try:
        if catalog is not None:
            poster_files = catalogs.read_catalog(catalog, images)["path"].tolist()
        elif images is not None:
            poster_files = predicting.image_files(images)
        elif files:
            poster_files = files
        else:
            raise typer.BadParameter("give poster FILEs, --images DIR or --catalog CSV")
        predictor = predicting.load(model, cache)
        result = predictor.predict(poster_files, tta=tta, similar=similar, progress=True)
        written = predicting.write(result, out)
    except (CatalogError, ModelError, FileNotFoundError, OutputError) as err:
        _fail(err)
    if len(result.table) <= SUMMARY_ROWS:
        _print_predictions(result.table)
    console.print(f"{len(result.table)} posters predicted, {len(result.errors)} could not be read "
                  f"-> {', '.join(str(p) for p in written.values())}")
    if result.table.empty:
        raise typer.Exit(code=1)


def _print_predictions(table) -> None:
    view = Table(title="Predictions")
    for column in ("poster", "score", "genres", "top probabilities"):
        view.add_column(column)
    for row in table.itertuples():
        top = sorted(row.probabilities.items(), key=lambda kv: -kv[1])[:3]
        view.add_row(Path(row.file).name, f"{row.score:.1f}", "|".join(row.genres) or "-",
                     ", ".join(f"{g} {p:.2f}" for g, p in top))
    Console().print(view)


@app.command()
def similar(
    model: Path = ModelOpt,
    image: Path = typer.Option(..., "--image", help="a poster file"),
    k: int = typer.Option(10, "--k", min=1, max=1000, help="how many similar movies"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write them to this CSV file"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """The training movies whose posters are most similar (genre space, cosine)."""
    from posterlens import predict as predicting
    from posterlens.model import ModelError

    try:
        found = predicting.load(model, cache or default_cache_dir()).similar(image, k)
    except (ModelError, PosterError) as err:
        _fail(err)
    view = Table(title=f"Movies similar to {image.name}")
    for column in ("title", "genres", "score", "similarity"):
        view.add_column(column)
    for row in found.itertuples():
        view.add_row(row.title, row.genres, f"{row.score:.1f}", f"{row.similarity:.3f}")
    Console().print(view)
    if out:
        from posterlens import safeio

        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            safeio.write_csv(found, out)
        except OutputError as err:
            _fail(err)


def _size(text: Optional[str]) -> Optional[tuple[int, int]]:
    if not text:
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected WIDTHxHEIGHT, e.g. 180x300") from None
    return width, height


@app.command()
def compare(
    catalog: Path = CatalogOpt,
    images: Optional[Path] = ImagesOpt,
    out: Path = typer.Option(..., "--out", help="folder for compare.md, compare.csv and compare.png"),
    models: Optional[list[str]] = typer.Option(None, "--models", help="head:<backbone>, finetune:<backbone>, cnn, mlp (repeatable)"),
    epochs: Optional[int] = typer.Option(None, help="epochs per model (default: per kind)"),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="WIDTHxHEIGHT for the pixel models, e.g. 180x300"),
    quick: bool = typer.Option(False, "--quick", help="about 100 posters, one epoch per model"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Compare transfer learning, fine-tuning, a small CNN and an MLP on one split (table + chart)."""
    from posterlens.compare import compare as run

    try:
        table = run(catalog, images, out, models=models, epochs=epochs, image_size=_size(image_size), quick=quick,
                    cache=cache or default_cache_dir())
    except (CatalogError, BackboneError, ValueError) as err:
        _fail(err)
    Console().print(table.to_string(index=False))
    console.print(f"table and chart: {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'compare.png'}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="where the demo writes its outputs"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Run the main job on the bundled sample posters."""
    from posterlens import pipeline

    pipeline.demo(out, cache or default_cache_dir())


if __name__ == "__main__":
    app()
