"""The main job end to end, as used by ``make demo`` (and mirrored by the Airflow DAG)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "sample"


def sample_catalog() -> Path:
    """The bundled sample's ``MovieGenre.csv`` (its posters are in ``images/`` beside it)."""
    path = SAMPLE_DIR / "MovieGenre.csv"
    if not path.is_file():
        raise FileNotFoundError(f"bundled sample not found at {path} (run from a clone of the repo)")
    return path


def demo(out: Path, cache: Path | None = None) -> None:
    """Embed the bundled sample and print a short summary."""
    from posterlens import backbones, catalog, features

    console = Console()
    cache = cache or out / "cache"
    table = catalog.read_catalog(sample_catalog())
    spec = backbones.resolve()
    result = features.embed_files(table["path"].tolist(), spec, cache)
    console.print(f"[bold]{len(table)}[/bold] sample posters, {len(catalog.genre_vocabulary(table))} genres")
    console.print(f"embedded with {spec.name} ({spec.width}x{spec.height}) -> {spec.feature_dim} dims: "
                  f"{result.computed} computed, {result.cached} from cache in {result.seconds:.1f} s")
