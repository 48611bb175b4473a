"""A large catalogue of distinct posters made from the development posters, for scale runs.

Each development poster gives up to ``len(VARIANTS)`` posters, one per variant below, each a
file with bytes (and so a feature-cache key) of its own. The transform is fixed, so the same
sources always give the same files:

- ``original``: the source file's bytes, unchanged;
- ``mirror``: flipped left to right;
- ``crop``: ``CROP`` of the width and height cut from each side;
- ``bright``: brightness x ``BRIGHTER``;
- ``mirror-crop-dim``: mirrored, cropped as ``crop`` and brightness x ``DIMMER``.

Every variant but the original is re-encoded as baseline JPEG, quality ``QUALITY``, without
metadata. Rows go variant by variant (every original, then every mirror, ...), so the first
``--count`` rows hold every source movie. Variant ``k`` of movie ``imdbId`` is movie
``k * ID_STRIDE + imdbId`` (its file ``tt%07d.jpg``), with the source's title (the variant's
name appended), IMDb link, score and genres. The catalogue's ``Poster`` URLs point at
``--base-url`` (``scripts/celery_cluster.py --data`` serves the folder and rewrites them to its
own 127.0.0.1 port). Near-copies of one movie land on both sides of the pipeline's train/holdout
split, so a model's figures on this catalogue say nothing about its quality.

    python scripts/make_big_catalogue.py /tmp/big20k [--count 20000] [--source /work/shared/data/posters]

Writes ``<dest>/images/``, ``<dest>/MovieGenre.csv`` and ``<dest>/README.md``; fails if two
files have the same content hash.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

DEFAULT_SOURCE = Path("/work/shared/data/posters")
ID_STRIDE = 10_000_000  # above every development imdbId (the largest is 5,061,814)
CROP = 0.04
BRIGHTER = 1.08
DIMMER = 0.92
QUALITY = 90


@dataclass(frozen=True)
class Variant:
    name: str
    mirror: bool = False
    crop: float = 0.0  # share of width and height cut from each side
    brightness: float = 1.0

    @property
    def unchanged(self) -> bool:
        return not self.mirror and not self.crop and self.brightness == 1.0

    def apply(self, data: bytes) -> bytes:
        """The variant's JPEG bytes of a poster's bytes (``data`` itself for the original)."""
        if self.unchanged:
            return data
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        if self.mirror:
            image = ImageOps.mirror(image)
        if self.crop:
            w, h = image.size
            dx, dy = round(w * self.crop), round(h * self.crop)
            image = image.crop((dx, dy, w - dx, h - dy))
        if self.brightness != 1.0:
            image = ImageEnhance.Brightness(image).enhance(self.brightness)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=QUALITY)
        return out.getvalue()


VARIANTS = (
    Variant("original"),
    Variant("mirror", mirror=True),
    Variant("crop", crop=CROP),
    Variant("bright", brightness=BRIGHTER),
    Variant("mirror-crop-dim", mirror=True, crop=CROP, brightness=DIMMER),
)


def source_rows(source: Path) -> list[dict]:
    """The source catalogue's rows whose poster file is there, in the catalogue's order."""
    with (source / "MovieGenre.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if (source / "images" / f"tt{int(r['imdbId']):07d}.jpg").is_file()]
    if not kept:
        raise SystemExit(f"{source}: no row of MovieGenre.csv has its poster in images/")
    if max(int(r["imdbId"]) for r in kept) >= ID_STRIDE:
        raise SystemExit(f"{source}: an imdbId of {ID_STRIDE:,} or more would clash with the variants' ids")
    return kept


def make(source: Path, dest: Path, count: int, base_url: str) -> dict:
    """Write ``count`` posters (at most ``len(VARIANTS)`` a source poster) and their catalogue."""
    from posterlens.data.images import content_hash

    rows = source_rows(source)
    if count > len(rows) * len(VARIANTS):
        raise SystemExit(f"--count {count:,}: {len(rows):,} source posters x {len(VARIANTS)} variants "
                         f"give at most {len(rows) * len(VARIANTS):,}")
    images = dest / "images"
    images.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}  # content hash -> file
    written, nbytes, start = [], 0, time.monotonic()
    for k, variant in enumerate(VARIANTS):
        for row in rows:
            if len(written) == count:
                break
            data = variant.apply((source / "images" / f"tt{int(row['imdbId']):07d}.jpg").read_bytes())
            movie = k * ID_STRIDE + int(row["imdbId"])
            name = f"tt{movie:07d}.jpg"
            key = content_hash(data)
            if key in seen:
                raise SystemExit(f"{name} has the same bytes as {seen[key]} (content hash {key})")
            seen[key] = name
            (images / name).write_bytes(data)
            nbytes += len(data)
            title = row["Title"] if variant.unchanged else f"{row['Title']} [{variant.name}]"
            written.append({**row, "imdbId": str(movie), "Title": title, "Poster": f"{base_url}/{name}"})
    with (dest / "MovieGenre.csv").open("w", newline="", encoding="utf-8") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows(written)
    per_variant = {v.name: sum(1 for i in range(len(written)) if i // len(rows) == k) for k, v in enumerate(VARIANTS)}
    facts = {"posters": len(written), "distinct_content_hashes": len(seen), "source_posters": len(rows),
             "per_variant": {k: n for k, n in per_variant.items() if n}, "mib": round(nbytes / 2**20, 1),
             "mean_kib": round(nbytes / len(written) / 1024, 1), "seconds": round(time.monotonic() - start, 1)}
    (dest / "README.md").write_text(_readme(source, facts))
    return facts


def _readme(source: Path, facts: dict) -> str:
    doc = sys.modules[__name__].__doc__.split("\n\n")
    return "\n\n".join([
        f"# {facts['posters']:,} posters made from {source}",
        f"Made by `scripts/make_big_catalogue.py` (posterlens): {facts['posters']:,} files, "
        f"{facts['distinct_content_hashes']:,} distinct content hashes, {facts['mib']} MiB "
        f"(mean {facts['mean_kib']} KiB), from {facts['source_posters']:,} source posters. Per variant: "
        + ", ".join(f"{k} {n:,}" for k, n in facts["per_variant"].items()) + ".",
        *doc[1:4],
        f"Here: CROP = {CROP}, BRIGHTER = {BRIGHTER}, DIMMER = {DIMMER}, QUALITY = {QUALITY}, ID_STRIDE = {ID_STRIDE:,}.",
    ]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="the folder to write (outside git, e.g. /tmp/big20k)")
    parser.add_argument("--count", type=int, default=20_000, help="posters to make")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="a folder with MovieGenre.csv and images/")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000",
                        help="where the Poster URLs point (celery_cluster.py rewrites them to its server)")
    args = parser.parse_args()
    facts = make(args.source, args.dest, args.count, args.base_url.rstrip("/"))
    print(f"{args.dest}: {facts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
