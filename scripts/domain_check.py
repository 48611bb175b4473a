"""How well ``domain_score`` tells movie posters from other images, by K-fold CV on a catalogue.

For each fold, a domain head (``models.trust.fit_domain``) is fitted on the other folds' posters;
its held-out posters and a folder of images that are not posters (``scripts/nonposter_set.py``:
photos, clip-art, art, documents, screenshots cropped to a poster's shape) are scored. Prints the
AUROC posters vs non-posters (overall and per kind) and the share of each flagged out of domain
(``domain_score < DOMAIN_SHARE``), mean and range over the folds.

    .venv/bin/python scripts/domain_check.py -c ../shared/data/posters/MovieGenre.csv \\
        --non-posters /work/nonposters --part heldout --cache /tmp/devcache
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold

from posterlens.features.embed import embed, load_dataset
from posterlens.models.trust import DOMAIN_COMPONENTS, DOMAIN_SHARE, fit_domain
from posterlens.workflows.config import TrainConfig

SHARES = (0.01, 0.05)
TRANSFORMS = {  # stand-ins for posters from other sources and decades: held-out posters, altered
    "greyscale": lambda im: im.convert("L").convert("RGB"),
    "faded": lambda im: ImageEnhance.Color(ImageEnhance.Contrast(im).enhance(0.6)).enhance(0.5),
    "low-res": lambda im: im.resize((im.width // 3, im.height // 3)).resize(im.size),
    "jpeg-q15": lambda im: im,  # saved at quality 15 below
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--catalog", type=Path, required=True)
    parser.add_argument("--non-posters", type=Path, required=True, help="folder with manifest.csv (file, kind, part)")
    parser.add_argument("--part", default="heldout", help="which part of the non-poster set: dev, heldout or all")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--components", type=int, default=DOMAIN_COMPONENTS)
    args = parser.parse_args()

    spec = TrainConfig().feature_spec()
    data = load_dataset(args.catalog, None, spec, args.cache, progress=False)
    posters = data.X
    manifest = pd.read_csv(args.non_posters / "manifest.csv")
    if args.part != "all":
        manifest = manifest[manifest["part"] == args.part]
    found = embed([str(args.non_posters / f) for f in manifest["file"]], spec, args.cache, progress=False)
    others, kinds = found.features[found.ok], manifest["kind"].to_numpy()[found.ok]
    print(f"{len(posters)} posters; {len(others)} non-posters ({args.part}): "
          + ", ".join(f"{k} {n}" for k, n in pd.Series(kinds).value_counts().sort_index().items()))

    rows = []
    for k, (train, held_out) in enumerate(KFold(args.folds, shuffle=True, random_state=0).split(posters)):
        head = fit_domain(posters[train], components=args.components)
        if k == 0:
            altered(head, data.table["path"].to_numpy()[held_out][:300], spec, args.cache)
        mine, theirs = head.score(posters[held_out]), head.score(others)
        row = {"posters flagged": float(np.mean(mine < DOMAIN_SHARE)),
               "non-posters flagged": float(np.mean(theirs < DOMAIN_SHARE)),
               "AUROC": auroc(mine, theirs)}
        for share in SHARES:  # what a stricter flag would catch
            row[f"at {share:.0%}: posters"] = float(np.mean(mine < share))
            row[f"at {share:.0%}: non-posters"] = float(np.mean(theirs < share))
        row |= {f"AUROC {k}": auroc(mine, theirs[kinds == k]) for k in sorted(set(kinds))}
        rows.append(row)
    table = pd.DataFrame(rows)
    print(f"{args.folds}-fold CV, {args.components} PCA axes, flag below domain_score {DOMAIN_SHARE}:")
    for name in table.columns:
        v = table[name]
        print(f"  {name:24s} {v.mean():.3f}  (folds {v.min():.3f}-{v.max():.3f})")


def altered(head, paths: np.ndarray, spec, cache: Path) -> None:
    """Share of held-out posters flagged once altered by each of ``TRANSFORMS``."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, transform in TRANSFORMS.items():
            files = []
            for i, path in enumerate(paths):
                files.append(f"{tmp}/{name}-{i}.jpg")
                transform(Image.open(path).convert("RGB")).save(files[-1], quality=15 if name == "jpeg-q15" else 90)
            found = embed(files, spec, cache, use_cache=False, progress=False)
            scores = head.score(found.features[found.ok])
            print(f"  {len(scores)} held-out posters, {name}: flagged {np.mean(scores < DOMAIN_SHARE):.3f}")


def auroc(posters: np.ndarray, others: np.ndarray) -> float:
    """AUROC of telling non-posters (positives) by a low ``domain_score``."""
    truth = np.r_[np.zeros(len(posters)), np.ones(len(others))]
    return float(roc_auc_score(truth, -np.r_[posters, others]))


if __name__ == "__main__":
    main()
