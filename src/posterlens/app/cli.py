"""The ``posterlens`` command line: a thin shell over the package's functions.

Importing this module stays light (no torch, numpy, pandas...): each command imports what
it needs when it runs, so ``posterlens --help`` answers at once.
"""

from __future__ import annotations

import logging
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
from posterlens.app.views import metrics_table, out_of_domain_note, predictions_table, validation_table
from posterlens.data.fetch_config import FetchConfig
from posterlens.errors import DataError, UserError
from posterlens.features.backbones import DEFAULT_FEATURES
from posterlens.features.engines import ENGINES
from posterlens.models.trust_settings import INTERVAL
from posterlens.workflows.config import SCORE_MODES, TUNE_BUDGET, TUNE_QUICK_BUDGET, TrainConfig

__all__ = ["app", "main"]

if TYPE_CHECKING:
    import pandas as pd

    from posterlens.features.embed import Embeddings, FeatureSpec

app = typer.Typer(help="Read a movie from its poster: genres, IMDb-style score, similar movies.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(stderr=True)

Engine = StrEnum("Engine", ENGINES)
ScoreMode = StrEnum("ScoreMode", SCORE_MODES)
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
PostersOpt = typer.Option(None, "--posters", exists=True, file_okay=False,
                          help="folder of the training posters (<id>.jpg), for a model without thumbnails")
QUIET_WARNINGS = (r"sklearn(\..*)?", r"fastai(\..*)?", r"timm(\..*)?", r"torch(\..*)?")  # shown with --verbose
SUMMARY_ROWS = 20  # predict prints a table for up to this many posters


def _backbones(names: Optional[list[str]]) -> list[str]:
    """``--backbone`` values (repeated, or joined by '+'), or the default features."""
    return [n for name in names for n in name.split("+") if n] if names else list(DEFAULT_FEATURES)


def _cache(cache: Optional[Path]) -> Path:
    """``--cache``, or the package's default cache folder."""
    from posterlens.features.store import default_cache_dir

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
    if not verbose:  # scikit-learn's convergence and future warnings say nothing a user can act on
        import warnings

        for module in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", module=module)


def _fail(err: Exception) -> None:
    """One line, exit code 2: bad input, named."""
    console.print(Text.assemble(("error: ", "red"), str(err)), soft_wrap=True)
    raise typer.Exit(code=2)


@contextmanager
def _user_errors(*also: type[Exception]) -> Iterator[None]:
    """The package's errors about the user's input (``errors.UserError``, and ``also``) as ``_fail``."""
    try:
        yield
    except (UserError, *also) as err:
        _fail(err)


def _out() -> Console:
    """The console for results (stdout), as wide as the terminal ($COLUMNS)."""
    return Console()


def _embed_catalog(catalog: Path, images: Optional[Path], backbone: Optional[list[str]], weights: Optional[Path],
                   cache: Path, engine: str = "auto", batch_size: int | None = None) -> tuple[pd.DataFrame, FeatureSpec, Embeddings]:
    """Read the catalogue and embed its posters (progress bar); returns (table, spec, embeddings)."""
    from posterlens.data import catalog as catalogs
    from posterlens.features.embed import embed

    table = catalogs.read_catalog(catalog, images)
    spec = TrainConfig(backbones=_backbones(backbone), weights=str(weights) if weights else None).feature_spec()
    return table, spec, embed(table["path"].tolist(), spec, cache, engine=engine, batch_size=batch_size)


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
    concurrency: Optional[int] = typer.Option(None, help=f"parallel connections (default: {FetchConfig.concurrency})"),
    retries: Optional[int] = typer.Option(None, help="extra attempts on timeouts, connection errors, 429 and 5xx "
                                          f"(default: {FetchConfig.retries})"),
    timeout: Optional[float] = typer.Option(None, help=f"seconds per request (default: {FetchConfig.timeout:g})"),
    max_bytes: Optional[int] = typer.Option(None, help=f"largest poster accepted, in bytes (default: {FetchConfig.max_bytes:,})"),
    limit: Optional[int] = typer.Option(None, help="at most this many posters (after --sample)"),
    sample: Optional[str] = typer.Option(None, help="per-genre:K or random:N"),
    seed: int = typer.Option(42, help="seed for --sample"),
    allow_private_hosts: bool = typer.Option(False, "--allow-private-hosts",
                                             help="also download from loopback and private addresses"),
) -> None:
    """Download the catalogue's posters: concurrent, validated, resumable (manifest.csv)."""
    from posterlens.data import catalog as catalogs
    from posterlens.data.fetch import fetch_posters, select

    given = {"concurrency": concurrency, "retries": retries, "timeout": timeout, "max_bytes": max_bytes}
    with _user_errors(ValueError):
        config = FetchConfig(**_set(given), allow_private_hosts=allow_private_hosts)
        table = catalogs.read_catalog(catalog, out, require_posters=False)
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


def _count(n: int, noun: str) -> str:
    """``1 poster``, ``2 posters``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _set(options: dict) -> dict:
    """The options the user set (an option left out falls through to the dataclass's default)."""
    return {k: v for k, v in options.items() if v is not None}


def _default(name: str):
    """``TrainConfig``'s default for a field (for help texts: the dataclass is the one source)."""
    return TrainConfig.__dataclass_fields__[name].default


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
    folds: Optional[int] = typer.Option(None, min=0, help="K-fold cross-validation (mean ± std) instead of one holdout "
                                        f"(default: {_default('folds')}, one holdout)"),
    holdout: Optional[float] = typer.Option(None, help=f"share held out for validation when --folds is 0 (default: {_default('holdout')})"),
    refit: Optional[bool] = typer.Option(None, "--refit/--no-refit", help="after validating, refit on every poster "
                                         "(--no-refit keeps the holdout out; default: refit)"),
    seed: Optional[int] = typer.Option(None, help=f"random seed for splits and every estimator (default: {_default('seed')})"),
    score_mode: Optional[ScoreMode] = typer.Option(None, help="regression, or classes (each distinct score a class; "
                                                   f"default: {_default('score_mode')})"),
    min_genre_count: Optional[int] = typer.Option(None, help="leave out genres with fewer training posters "
                                                  f"(default: {_default('min_genre_count')})"),
    thumbnails: Optional[bool] = typer.Option(None, "--thumbnails/--no-thumbnails",
                                              help="keep a 48x72 WebP thumbnail of each training poster in the model "
                                                   "(about 1 KB each), so similar movies show posters anywhere "
                                                   "(default: on)"),
    text: Optional[bool] = typer.Option(None, "--text/--no-text",
                                        help="also read the text printed on each poster (rapidocr: pip install "
                                             "'posterlens[text]') and fuse text genre and score models with the image ones: "
                                             "+0.03 macro-mAP, score Spearman 0.37 -> 0.43 in 5-fold CV (docs/text.md); costs ~0.1 s of OCR per "
                                             "new poster (cached), in training and in every prediction "
                                             "(default: off, or --config's)"),
    corrections: Optional[str] = typer.Option(None, help="reviews from `posterlens serve --review` (SQLite file or "
                                              "postgresql:// URL): they replace the catalogue's genres and scores"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Train the genre and score models on poster embeddings and write a model directory."""
    cache = _cache(cache)
    with _user_errors():
        from posterlens.data.corrections import open_db
        from posterlens.features.embed import load_dataset
        from posterlens.workflows.train import train as run

        settings = TrainConfig.from_file(config_file) if config_file else {}
        given = _set({"folds": folds, "holdout": holdout, "refit": refit, "seed": seed, "min_genre_count": min_genre_count,
                      "score_mode": score_mode.value if score_mode else None, "text": text, "thumbnails": thumbnails,
                      "backbones": _backbones(backbone) if backbone else None, "weights": str(weights) if weights else None})
        config = TrainConfig(**{**settings, **given,
                                "genre": {**settings.get("genre", {}), **({"epochs": epochs} if epochs else {})}})
        if corrections is not None:  # a bad database fails now, not after the embedding
            open_db(corrections, "--corrections", create=False).dispose()
        start = time.perf_counter()  # read and embed once (progress bar), then train on that dataset
        ocr = None
        if config.text:
            from posterlens.features.ocr import OcrSettings

            ocr = OcrSettings()
        data = load_dataset(catalog, images, config.feature_spec(), cache, progress=True, text=ocr)
        embedded = time.perf_counter() - start
        with console.status("fitting the genre and score models: validation, then the final fit..."):
            result = run(catalog, images, out, config, cache, progress=False, data=data, corrections=corrections)
    model = result.model
    held = {"genres and score": f"{len(model.genres)} genres, score: {model.score_mode}",
            "genres only": f"{len(model.genres)} genres, no score model", "score only": f"score only: {model.score_mode}"}
    console.print(f"model: [bold]{out}[/bold] ({held[model.kind]}, trained on {_count(model.info['n_train'], 'poster')}; "
                  f"validated on {model.info['evaluated_on']})")
    if corrections is not None:
        console.print(f"corrections: {_count(model.info['n_corrections'], 'poster')} relabelled by their reviews")
    seconds = {**result.seconds, "embed": embedded, "total": embedded + result.seconds["total"]}
    console.print(f"time ({len(data)} posters): " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    if result.validation:
        _out().print(validation_table(result.validation))


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
        from posterlens.workflows.evaluate import evaluate as run

        result = run(model, catalog, images, out, _cache(cache))
    _out().print(metrics_table(result.metrics))
    console.print(f"report: [bold]{result.report}[/bold]")


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
    interval: float = typer.Option(INTERVAL, help="level of the score intervals (score_low, score_high)"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Predict genres and score for many posters: predictions_{score,genre,final}.csv and errors.csv, each
    row with a score interval, the genres' confidence and in_domain (false: not like a movie poster)."""
    cache = _cache(cache)
    with _user_errors(FileNotFoundError):
        from posterlens.app import outputs
        from posterlens.data import catalog as catalogs
        from posterlens.data.images import scan_folder
        from posterlens.workflows import predict as predicting

        table = catalogs.read_catalog(catalog, images) if catalog is not None else None
        if table is not None:
            poster_files = table["path"].tolist()
        elif images is not None:
            poster_files = scan_folder(images)
            if not poster_files:
                raise DataError(f"--images {images}: no files that may be posters in this folder")
        elif files:
            poster_files = files
        else:
            raise typer.BadParameter("give poster FILEs, --images DIR or --catalog CSV")
        predictor = predicting.load(model, cache)
        result = predictor.predict(poster_files, tta=tta, similar=similar, progress=True, warn=False, interval=interval)
        written = outputs.write(result, out, catalog=table, wide=wide) if out else {}
    if len(result) <= SUMMARY_ROWS:
        _out().print(predictions_table(result))
    for line in out_of_domain_note(result):
        console.print(line)
    for file, reason in result.attrs["errors"].itertuples(index=False):
        console.print(f"could not read {file}: {reason}", soft_wrap=True)
    files = f" -> {', '.join(str(p) for p in written.values())}" if written else ""
    console.print(f"{_count(len(result), 'poster')} predicted, {len(result.attrs['errors'])} could not be read{files}",
                  soft_wrap=True)
    if result.empty:
        raise typer.Exit(code=1)


@app.command()
def similar(
    model: Optional[Path] = ReleasedModelOpt,
    image: Path = typer.Option(..., "--image", "-i", help="a poster file"),
    k: int = typer.Option(10, "--k", "-k", min=1, max=1000, help="how many similar movies"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="also write them to similar.csv in this folder"),
    posters: Optional[Path] = PostersOpt,
    cache: Optional[Path] = CacheOpt,
) -> None:
    """The training movies whose posters are most similar (genre space, cosine)."""
    cache = _cache(cache)
    with _user_errors():
        from posterlens import safeio
        from posterlens.workflows import predict as predicting

        found = predicting.load(model, cache, posters=posters).similar(image, k)
        if out:
            safeio.make_dir(out)
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
        from posterlens.workflows.compare import compare as run

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
    budget: Optional[int] = typer.Option(None, min=1, max=100_000, help="configurations drawn at random per model, "
                                         f"besides today's defaults (default: {TUNE_BUDGET}; {TUNE_QUICK_BUDGET} with --quick)"),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", min=0.1, max=10_000,
                                               help="minutes: no configuration starts past this"),
    quick: bool = typer.Option(False, "--quick", help="a sample of the posters, 2 epochs, small built-in grids"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Search hyper-parameters by K-fold cross-validation: tune.csv, tune.md, figures and best.json."""
    with _user_errors():
        from posterlens.workflows.tune import tune as run

        table = run(catalog, images, out, _cache(cache), space=space, folds=folds, budget=budget, quick=quick,
                    time_limit=time_limit)
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
        from posterlens.workflows import explain as explaining
        from posterlens.workflows import predict as predicting

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
    posters: Optional[Path] = PostersOpt,
    review: Optional[Path] = typer.Option(None, help="a catalogue to review at /review, least confident poster first"),
    images: Optional[Path] = ImagesOpt,
    review_db: Optional[str] = typer.Option(None, help="SQLite file or postgresql:// URL for --review's reviews "
                                            "(default: posterlens-review.sqlite beside the catalogue)"),
    reviewer: Optional[str] = typer.Option(None, help="name stored with each review (default: your user name)"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Serve the web page and the JSON API (OpenAPI at /docs) with the model loaded once."""
    cache = _cache(cache)
    limits = {k: v for k, v in {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}.items() if v is not None}
    with _user_errors():
        from posterlens.app import serve as serving

        serving.run(model, host=host, port=port, cache=cache, allow_url_fetch=allow_url_fetch, posters=posters,
                    review=review, images=images, review_db=review_db, reviewer=reviewer, **limits)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="where the demo writes its outputs"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Run the main job on the bundled sample posters."""
    from posterlens.app.demo import demo as run

    with _user_errors():
        run(out, _cache(cache))


def main() -> None:
    """The ``posterlens`` command (``python -m posterlens``)."""
    app(prog_name="posterlens")


if __name__ == "__main__":
    main()
