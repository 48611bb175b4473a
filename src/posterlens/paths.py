"""Where the files that ship inside the package live (they install with the wheel)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PACKAGE_DIR", "RELEASED_DIR", "SAMPLE_DIR", "STATIC_DIR", "TEMPLATES_DIR", "shared_data_dir"]

PACKAGE_DIR = Path(__file__).resolve().parent
RELEASED_DIR = PACKAGE_DIR / "released"  # the released model (``make release-model``)
SAMPLE_DIR = PACKAGE_DIR / "sample"  # 240 bundled posters (``examples/sample`` in a clone links here)
STATIC_DIR = PACKAGE_DIR / "app" / "static"  # the web page
TEMPLATES_DIR = PACKAGE_DIR / "workflows" / "templates"  # the evaluation report


def shared_data_dir() -> Path | None:
    """The development set beside a clone (``../shared/data/posters``), or None (an installed package)."""
    folder = PACKAGE_DIR.parents[2] / "shared" / "data" / "posters"
    return folder if (folder / "MovieGenre.csv").is_file() else None
