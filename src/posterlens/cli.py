"""The ``posterlens`` command line: a thin shell over the package's functions.

Importing this module stays light (no torch, numpy, pandas...): each command imports what
it needs when it runs, so ``posterlens --help`` answers at once.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from posterlens import __version__
from posterlens.backbones import DEFAULT_FEATURES

if TYPE_CHECKING:
    import pandas as pd

    from posterlens.features import Embeddings, FeatureSpec

app = typer.Typer(help="Read a movie from its poster: genres, IMDb-style score, similar movies.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(stderr=True)

# features.ENGINES, written out so that the CLI does not import numpy to list them (a test checks they agree)
Engine = StrEnum("Engine", ("auto", "openvino-int8", "openvino", "onnx", "torch"))
ScoreMode = StrEnum("ScoreMode", ["regression", "classes"])
# The package's errors about the user's input (module, class): one line and exit code 2.
# Looked up in sys.modules, so that naming them imports nothing.
USER_ERRORS = (("posterlens.backbones", "BackboneError"), ("posterlens.catalog", "CatalogError"),
               ("posterlens.images", "PosterError"), ("posterlens.features", "EngineError"), ("posterlens.model", "ModelError"),
               ("posterlens.safeio", "OutputError"), ("posterlens.train", "TrainError"),
               ("posterlens.evaluate", "EvaluationError"), ("posterlens.text", "TextUnavailable"),
               ("posterlens.text", "TextModelError"))
QUIET_LOGGERS = ("httpx", "httpcore", "fastai", "onnxruntime", "openvino", "airflow", "matplotlib", "PIL",
                 "urllib3", "timm", "torch")  # at WARNING unless --verbose

CatalogOpt = typer.Option(..., "--catalog", "-c", help="MovieGenre.csv, multi-label CSV, or a folder of Title_8.8.jpg posters")
ImagesOpt = typer.Option(None, "--images", "-i", help="folder with the posters (default: images/ next to the catalogue)")
CacheOpt = typer.Option(None, "--cache", help="feature cache folder (default: $POSTERLENS_CACHE or ~/.cache/posterlens)")
BackboneOpt = typer.Option(None, "--backbone", help=f"registered backbone or timm model name; repeat to concatenate "
                           f"(default: {' + '.join(DEFAULT_FEATURES)})")
WeightsOpt = typer.Option(None, "--weights", help="weights file for a single backbone without offline weights")
EngineOpt = typer.Option(Engine.auto, "--engine", help="auto: the fastest engine that pays for itself here "
                         "(OpenVINO int8 for large jobs on CPUs with VNNI, else OpenVINO, else ONNX Runtime)")
ModelOpt = typer.Option(..., "--model", "-m", help="model directory from `posterlens train`")
ReleasedModelOpt = typer.Option(None, "--model", "-m", help="model directory from `posterlens train` "
                                "(default: the model released with posterlens)")
SUMMARY_ROWS = 20  # predict prints a table for up to this many posters


def _backbones(names: Optional[list[str]]) -> list[str]:
    """``--backbone`` values (repeated, or joined by '+'), or the default features."""
    return [n for name in names for n in name.split("+") if n] if names else list(DEFAULT_FEATURES)


def _cache(cache: Optional[Path]) -> Path:
    """``--cache``, or the package's default cache folder."""
    from posterlens.features import default_cache_dir

    return cache or default_cache_dir()


def _show_version(value: bool) -> None:
    if value:
        print(f"posterlens {__version__}")
        raise typer.Exit()


@app.callback()
def setup(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="more log output, third-party libraries' too"),
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="show the version and exit"),
) -> None:
    """Set up logging for every command."""
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def _fail(err: Exception) -> None:
    """One line, exit code 2: bad input, named."""
    console.print(Text.assemble(("error: ", "red"), str(err)), soft_wrap=True)
    raise typer.Exit(code=2)


@contextmanager
def _user_errors(*also: type[Exception]) -> Iterator[None]:
    """The package's errors about the user's input (``USER_ERRORS``, and ``also``) as ``_fail``."""
    try:
        yield
    except Exception as err:
        known = tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules)
        if isinstance(err, (*known, *also)):
            _fail(err)
        raise


def _out() -> Console:
    """The console for results (stdout), as wide as the terminal ($COLUMNS)."""
    return Console()


def _embed_catalog(catalog: Path, images: Optional[Path], backbone: Optional[list[str]], weights: Optional[Path],
                   cache: Path, engine: str = "auto", batch_size: int | None = None) -> tuple[pd.DataFrame, FeatureSpec, Embeddings]:
    """Read the catalogue and embed its posters (progress bar); returns (table, spec, embeddings)."""
    from posterlens import catalog as catalogs, features
    from posterlens.train import TrainConfig

    table = catalogs.read_catalog(catalog, images)
    spec = TrainConfig(backbones=_backbones(backbone), weights=str(weights) if weights else None).feature_spec()
    return table, spec, features.embed(table["path"].tolist(), spec, cache, engine=engine, batch_size=batch_size)


@app.command()
def embed(
    catalog: Path = CatalogOpt,
    images: Optional[Path] = ImagesOpt,
    backbone: Optional[list[str]] = BackboneOpt,
    weights: Optional[Path] = WeightsOpt,
    cache: Optional[Path] = CacheOpt,
    engine: Engine = EngineOpt,
    batch_size: Optional[int] = typer.Option(None, min=1, max=1024, help="posters per forward pass "
                                             "(default: 32 for openvino-int8, else 8)"),
) -> None:
    """Embed every poster of a catalogue with pretrained backbones (cached on disk)."""
    with _user_errors():
        table, spec, result = _embed_catalog(catalog, images, backbone, weights, _cache(cache), engine.value, batch_size)
    summary = Table(title=f"embeddings: {spec.name} ({spec.feature_dim} dims)")
    for column in ("posters", "computed", "from cache", "failed", "seconds", "posters/s"):
        summary.add_column(column, justify="right")
    summary.add_row(str(len(table)), str(result.computed), str(result.cached), str(len(result.errors)),
                    f"{result.seconds:.1f}", f"{len(table) / max(result.seconds, 1e-9):.1f}")
    _out().print(summary)
    if len(result.errors) == len(table):
        raise typer.Exit(code=1)


@app.command()
def fetch(
    catalog: Path = CatalogOpt,
    out: Path = typer.Option(..., "--out", "-o", help="folder to download the posters into"),
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

    with _user_errors(ValueError):
        table = catalogs.read_catalog(catalog, out, require_posters=False)
        config = FetchConfig(concurrency=concurrency, retries=retries, timeout=timeout, max_bytes=max_bytes,
                             allow_private_hosts=allow_private_hosts)
        summary = fetch_posters(select(table, limit, sample, seed), out, config)
    view = Table(title=f"fetch: {out}")
    view.add_column("status")
    view.add_column("posters", justify="right")
    for status, count in sorted(summary.counts.items(), key=lambda kv: -kv[1]):
        view.add_row(status, str(count))
    _out().print(view)
    console.print(f"manifest: {summary.manifest}")
    if summary.n_ok == 0:
        raise typer.Exit(code=1)


@app.command()
def train(
    catalog: Path = CatalogOpt,
    images: Optional[Path] = ImagesOpt,
    out: Path = typer.Option(..., "--out", "-o", help="model directory to write (replaced only once the new one is complete)"),
    config_file: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False,
                                               help="best.json from `posterlens tune`: backbones and estimator settings "
                                                    "(--backbone and --epochs override it)"),
    backbone: Optional[list[str]] = BackboneOpt,
    weights: Optional[Path] = WeightsOpt,
    epochs: Optional[int] = typer.Option(None, min=1, help="fit_one_cycle epochs of the genre network (default: GenreClassifier's)"),
    folds: int = typer.Option(0, min=0, help="K-fold cross-validation (mean ± std) instead of one holdout"),
    holdout: float = typer.Option(0.2, min=0.0, max=0.95, help="share held out for validation when --folds is 0"),
    refit: bool = typer.Option(True, "--refit/--no-refit", help="after validating, refit on every poster (--no-refit keeps the holdout out)"),
    seed: int = typer.Option(42, help="random seed for splits and training"),
    score_mode: ScoreMode = typer.Option(ScoreMode.regression, help="regression, or classes (each distinct score a class)"),
    min_genre_count: int = typer.Option(20, min=1, help="leave out genres with fewer training posters"),
    text: Optional[bool] = typer.Option(None, "--text/--no-text",
                                        help="also read the text printed on each poster (rapidocr: pip install "
                                             "'posterlens[text]') and fuse text genre and score models with the image ones: "
                                             "+0.03 macro-mAP, score Spearman 0.37 -> 0.43 in 5-fold CV (docs/text.md); costs ~0.4 s of OCR per "
                                             "new poster (cached), in training and in every prediction "
                                             "(default: off, or --config's)"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Train the genre and score models on poster embeddings and write a model directory."""
    cache = _cache(cache)
    with _user_errors():
        from posterlens.train import TrainConfig, train as run
        from posterlens.tune import read_config

        settings = read_config(config_file) if config_file else {}
        config = TrainConfig(**{
            **settings,
            "backbones": _backbones(backbone) if backbone else settings.get("backbones", _backbones(None)),
            "weights": str(weights) if weights else None, "folds": folds, "holdout": holdout, "refit": refit,
            "seed": seed, "score_mode": score_mode.value, "min_genre_count": min_genre_count,
            "text": settings.get("text", False) if text is None else text,
            "genre": {**settings.get("genre", {}), **({"epochs": epochs} if epochs else {})}})
        # embeddings (and with --text the posters' text) with a progress bar; train reads them from the cache
        start = time.perf_counter()
        table, _, emb = _embed_catalog(catalog, images, config.backbones, weights, cache)
        if config.text:
            from posterlens.text import OcrSettings, read_texts

            read_texts([p for p, ok in zip(table["path"], emb.ok) if ok], cache, OcrSettings())
        embedded = time.perf_counter() - start
        with console.status("fitting the genre and score models: validation, then the final fit..."):
            result = run(catalog, images, out, config, cache, progress=False)
    model = result.model
    console.print(f"model: [bold]{out}[/bold] ({len(model.genres)} genres, score: {model.score_mode}, "
                  f"trained on {model.info['n_train']} posters; validated on {model.info['evaluated_on']})")
    seconds = {**result.seconds, "embed": embedded + result.seconds["embed"], "total": embedded + result.seconds["total"]}
    console.print(f"time ({emb.computed} posters embedded): " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    if result.validation:
        _out().print(validation_table(result.validation))


VALIDATION_ROWS = {"genre": ("macro_map", "macro_f1", "micro_f1", "samples_f1", "macro_roc_auc", "genres_per_poster"),
                   "score": ("mae", "spearman")}
# what a figure is read against, where train's validation has it: (group, figure) -> (its key, what it is)
REFERENCES = {("genre", "genres_per_poster"): ("true_genres_per_poster", "true"),
              ("score", "mae"): ("baseline_mae", "predicting the mean")}


def _show(value) -> str:
    """A figure: mean ± std for cross-validation, one value for a holdout."""
    return f"{value['mean']:.3f} ± {value['std']:.3f}" if isinstance(value, dict) else f"{value:.3f}"


def _reference(group: str, name: str, figures: dict) -> str:
    """The baseline of ``name`` in ``figures``: the top-2-constant one (``baselines``, as evaluate
    writes them) or ``REFERENCES``; empty when train did not compute it."""
    top2 = (figures.get("baselines") or {}).get("top2_constant") or {}
    if name in top2:
        return f"{_show(top2[name])} (top-2 constant)"
    key, label = REFERENCES.get((group, name), (None, ""))
    return f"{_show(figures[key])} ({label})" if key in figures else ""


def validation_table(validation: dict) -> Table:
    """Train's headline validation figures next to their baselines."""
    table = Table(title=f"validation: {validation['method']}")
    table.add_column("metric", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    table.add_column("baseline", justify="right", overflow="fold")
    for group, names in VALIDATION_ROWS.items():
        figures = validation.get(group) or {}
        for name in (n for n in names if n in figures):
            table.add_row(f"{group} {name}", _show(figures[name]), _reference(group, name, figures))
    return table


@app.command()
def evaluate(
    model: Path = ModelOpt,
    catalog: Path = CatalogOpt,
    images: Optional[Path] = ImagesOpt,
    out: Path = typer.Option(..., "--out", "-o", help="report directory to write"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Evaluate a model on the catalogue's posters it never saw: metrics.json, figures, report.html."""
    with _user_errors():
        from posterlens.evaluate import evaluate as run

        result = run(model, catalog, images, out, _cache(cache))
    _print_metrics(result.metrics)
    console.print(f"report: [bold]{result.report}[/bold]")


def _print_metrics(metrics: dict) -> None:
    """Evaluate's figures next to the top-2-constant and priors baselines."""
    genre = metrics["genre"]
    base = genre["baselines"]
    table = Table(title=f"{metrics['n_posters']} unseen posters, {metrics['n_genres']} genres")
    for column in ("metric", "model", "top-2 constant", "priors"):
        table.add_column(column, justify="right", overflow="fold")
    for name in ("macro_map", "macro_f1", "micro_f1", "macro_roc_auc", "binary_accuracy", "hamming_loss", "ece"):
        table.add_row(name, f"{genre[name]:.4f}", f"{base['top2_constant'][name]:.4f}", f"{base['priors'][name]:.4f}")
    if metrics.get("score"):
        score = metrics["score"]
        table.add_row("score MAE", f"{score['mae']:.4f}", "", f"{score['baseline_mae']:.4f} (mean)")
        table.add_row("score Spearman", f"{score['spearman']:.4f}", "", "")
    _out().print(table)


@app.command()
def predict(
    files: Optional[list[Path]] = typer.Argument(None, help="poster files (or use --images / --catalog)"),
    model: Optional[Path] = ReleasedModelOpt,
    images: Optional[Path] = typer.Option(None, "--images", "-i", exists=True, file_okay=False,
                                          help="folder of posters (all files), or with --catalog"),
    catalog: Optional[Path] = typer.Option(None, "--catalog", "-c", help="predict the catalogue's posters"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for the prediction CSV files (none: print only)"),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="average each poster with its mirror image"),
    similar: int = typer.Option(0, "--similar", "-k", min=0, max=1000, help="add the K most similar training movies"),
    wide: bool = typer.Option(False, "--wide", help="one probability column a genre in predictions_final.csv"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Predict genres and score for many posters: predictions_{score,genre,final}.csv and errors.csv."""
    cache = _cache(cache)
    with _user_errors(FileNotFoundError):
        from posterlens import catalog as catalogs, predict as predicting

        table = catalogs.read_catalog(catalog, images) if catalog is not None else None
        if table is not None:
            poster_files = table["path"].tolist()
        elif images is not None:
            poster_files = predicting.image_files(images)
        elif files:
            poster_files = files
        else:
            raise typer.BadParameter("give poster FILEs, --images DIR or --catalog CSV")
        predictor = predicting.load(model, cache)
        result = predictor.predict(poster_files, tta=tta, similar=similar, progress=True, warn=False)
        written = predicting.write(result, out, catalog=table, wide=wide) if out else {}
    if len(result) <= SUMMARY_ROWS:
        _out().print(predictions_table(result))
    for file, reason in result.attrs["errors"].itertuples(index=False):
        console.print(f"could not read {file}: {reason}", soft_wrap=True)
    files = f" -> {', '.join(str(p) for p in written.values())}" if written else ""
    console.print(f"{len(result)} posters predicted, {len(result.attrs['errors'])} could not be read{files}",
                  soft_wrap=True)
    if result.empty:
        raise typer.Exit(code=1)


def predictions_table(predictions: pd.DataFrame) -> Table:
    """Poster, score, genres and the three most likely genres, one row a poster."""
    genres = predictions.attrs["genres"]
    view = Table(title="Predictions")
    for column in ("poster", "score", "genres", "top probabilities"):
        view.add_column(column, overflow="fold")
    for row, probs in zip(predictions.itertuples(), predictions[genres].to_numpy()):
        top = sorted(zip(genres, probs), key=lambda kv: -kv[1])[:3]
        view.add_row(Path(row.file).name, f"{row.score:.1f}", " | ".join(row.genres) or "-",
                     ", ".join(f"{g} {p:.2f}" for g, p in top))
    return view


@app.command()
def similar(
    model: Optional[Path] = ReleasedModelOpt,
    image: Path = typer.Option(..., "--image", "-i", help="a poster file"),
    k: int = typer.Option(10, "--k", "-k", min=1, max=1000, help="how many similar movies"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="also write them to similar.csv in this folder"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """The training movies whose posters are most similar (genre space, cosine)."""
    cache = _cache(cache)
    with _user_errors():
        from posterlens import predict as predicting, safeio

        found = predicting.load(model, cache).similar(image, k)
        if out:
            out.mkdir(parents=True, exist_ok=True)
            safeio.write_csv(found, out / "similar.csv")
    view = Table(title=f"Movies similar to {image.name}")
    for column in ("title", "genres", "score", "similarity"):
        view.add_column(column, overflow="fold")
    for row in found.itertuples():
        view.add_row(row.title, row.genres.replace("|", " | "), f"{row.score:.1f}", f"{row.similarity:.3f}")
    _out().print(view)


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
    out: Path = typer.Option(..., "--out", "-o", help="folder for compare.md, compare.csv and compare.png"),
    models: Optional[list[str]] = typer.Option(None, "--models", help="head:<backbone>, finetune:<backbone>, cnn, mlp (repeatable)"),
    epochs: Optional[int] = typer.Option(None, help="epochs per model (default: per kind)"),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="WIDTHxHEIGHT for the pixel models, e.g. 180x300"),
    quick: bool = typer.Option(False, "--quick", help="about 100 posters, one epoch per model"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Compare transfer learning, fine-tuning, a small CNN and an MLP on one split (table + chart)."""
    size = _size(image_size)
    with _user_errors(ValueError):
        from posterlens.compare import compare as run

        table = run(catalog, images, out, models=models, epochs=epochs, image_size=size, quick=quick, cache=_cache(cache))
    _out().print(table.to_string(index=False))
    console.print(f"table and chart: {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'compare.png'}")


@app.command()
def tune(
    catalog: Path = CatalogOpt,
    images: Optional[Path] = ImagesOpt,
    out: Path = typer.Option(..., "--out", "-o", help="folder for tune.csv, tune.md, the figures and best.json"),
    space: str = typer.Option("heads", "--space", help="heads, features, cnn, or a YAML/JSON file of parameter lists"),
    folds: int = typer.Option(5, min=2, help="K-fold cross-validation (iterative stratification)"),
    budget: Optional[int] = typer.Option(None, min=1, help="configurations drawn at random per model (default: the whole grid)"),
    quick: bool = typer.Option(False, "--quick", help="a sample of the posters, 2 epochs, small built-in grids"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Search hyper-parameters by K-fold cross-validation: tune.csv, tune.md, figures and best.json."""
    with _user_errors():
        from posterlens.tune import tune as run

        table = run(catalog, images, out, _cache(cache), space=space, folds=folds, budget=budget, quick=quick)
    best = table[table["rank"] == 1]
    _out().print(best[["model", "settings"]].to_string(index=False))
    console.print(f"ranking and intervals: {out / 'tune.md'}; train with it: posterlens train --config {out / 'best.json'}")


@app.command()
def explain(
    model: Optional[Path] = ReleasedModelOpt,
    image: Path = typer.Option(..., "--image", "-i", exists=True, dir_okay=False, help="a poster file"),
    genre: Optional[list[str]] = typer.Option(None, "--genre", "-g", help="genre to explain; repeat "
                                              "(default: the predicted genres)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for <poster>.<genre>.png overlays and <poster>.maps.npz"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Heat maps (HiResCAM) of where on the poster each genre comes from, overlaid on the poster."""
    cache = _cache(cache)
    with _user_errors(ValueError):
        from posterlens import explain as explaining, predict as predicting

        result = explaining.explain_poster(predicting.load(model, cache), image, genre or None)
        written = explaining.save(result, out, image.stem)
    for name in result["genres"]:
        console.print(f"{name}: p = {result['probabilities'][name]:.3f}")
    console.print(f"wrote {len(written)} files to {out}")


@app.command()
def serve(
    model: Optional[Path] = ReleasedModelOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535),
    allow_url_fetch: bool = typer.Option(False, "--allow-url-fetch/--no-url-fetch",
                                         help="let the page fetch a poster from a public URL"),
    max_upload_bytes: Optional[int] = typer.Option(None, "--max-upload-bytes", min=1,
                                                   help="largest upload accepted (default: serve.MAX_UPLOAD_BYTES, 10 MB)"),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1,
                                             help="largest image accepted, in pixels (default: serve.MAX_PIXELS, 25 Mpx)"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Serve the web page and the JSON API (OpenAPI at /docs) with the model loaded once."""
    cache = _cache(cache)
    limits = {k: v for k, v in {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}.items() if v is not None}
    with _user_errors():
        from posterlens import serve as serving

        serving.run(model, host=host, port=port, cache=cache, allow_url_fetch=allow_url_fetch, **limits)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="where the demo writes its outputs"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Run the main job on the bundled sample posters."""
    from posterlens import pipeline

    pipeline.demo(out, _cache(cache))


def main() -> None:
    """The ``posterlens`` command (``python -m posterlens``)."""
    app(prog_name="posterlens")


if __name__ == "__main__":
    main()
