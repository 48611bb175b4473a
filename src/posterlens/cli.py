"""The ``posterlens`` command line: a thin shell over the package's functions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from posterlens.backbones import DEFAULT_BACKBONE, BackboneError
from posterlens.catalog import CatalogError

app = typer.Typer(help="Read a movie from its poster: genres, IMDb-style score, similar movies.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(stderr=True)

CatalogOpt = typer.Option(..., "--catalog", help="MovieGenre.csv, multi-label CSV, or a folder of Title_8.8.jpg posters")
ImagesOpt = typer.Option(None, "--images", help="folder with the posters (default: images/ next to the catalogue)")
CacheOpt = typer.Option(None, "--cache", help="feature cache folder (default: $POSTERLENS_CACHE or ~/.cache/posterlens)")
BackboneOpt = typer.Option(DEFAULT_BACKBONE, "--backbone", help="registered backbone or timm model name")
WeightsOpt = typer.Option(None, "--weights", help="weights file for a backbone without offline weights")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="more log output")) -> None:
    """Set up logging for every command."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(code=2)


@app.command()
def embed(
    catalog: Path = CatalogOpt,
    images: Optional[Path] = ImagesOpt,
    backbone: str = BackboneOpt,
    weights: Optional[Path] = WeightsOpt,
    cache: Optional[Path] = CacheOpt,
    engine: str = typer.Option("onnx", help="onnx (fast on CPU) or torch"),
    batch_size: int = typer.Option(32, help="posters per forward pass"),
) -> None:
    """Embed every poster of a catalogue with a pretrained backbone (cached on disk)."""
    from posterlens import backbones, catalog as catalogs, features

    try:
        table = catalogs.read_catalog(catalog, images)
        spec = backbones.resolve(backbone, weights)
        result = features.embed_files(table["path"].tolist(), spec, cache, engine=engine, batch_size=batch_size)
    except (CatalogError, BackboneError) as err:
        _fail(err)
    summary = Table(title=f"embeddings: {spec.name} ({spec.width}x{spec.height}, {spec.feature_dim} dims)")
    for column in ("posters", "computed", "from cache", "failed", "seconds", "posters/s"):
        summary.add_column(column, justify="right")
    summary.add_row(str(len(table)), str(result.computed), str(result.cached), str(len(result.errors)),
                    f"{result.seconds:.1f}", f"{len(table) / max(result.seconds, 1e-9):.1f}")
    Console().print(summary)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="where the demo writes its outputs"),
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Run the main job on the bundled sample posters."""
    from posterlens import pipeline

    pipeline.demo(out, cache)


if __name__ == "__main__":
    app()
