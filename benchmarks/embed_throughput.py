"""Benchmark: embedding throughput, cold and from the cache, with peak memory.

    .venv/bin/python benchmarks/embed_throughput.py [--catalog CSV] [--images DIR] [--backbone NAME]

Runs each pass in a fresh process (so peak memory is per pass) against a new temporary
cache: pass 1 is cold (ONNX export included), pass 2 reads everything from the cache.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "posters"


def one_pass(catalog: str, images: str, backbone: str, cache: str, engine: str) -> dict:
    from posterlens import backbones, catalog as catalogs, features

    start = time.perf_counter()
    table = catalogs.read_catalog(catalog, images)
    result = features.embed_files(table["path"].tolist(), backbones.resolve(backbone), Path(cache),
                                  engine=engine, progress=False)
    seconds = time.perf_counter() - start
    return {"posters": len(table), "computed": result.computed, "cached": result.cached,
            "seconds": round(seconds, 2), "posters_per_s": round(len(table) / seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(SHARED / "MovieGenre.csv"))
    parser.add_argument("--images", default=str(SHARED / "images"))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--engine", default="onnx")
    parser.add_argument("--one-pass", metavar="CACHE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_pass:
        print(json.dumps(one_pass(args.catalog, args.images, args.backbone, args.one_pass, args.engine)))
        return
    with tempfile.TemporaryDirectory() as cache:
        for name in ("cold", "cached"):
            out = subprocess.run([sys.executable, __file__, "--catalog", args.catalog, "--images", args.images,
                                  "--backbone", args.backbone, "--engine", args.engine, "--one-pass", cache],
                                 check=True, capture_output=True, text=True).stdout
            print(f"{name:>6} ({args.backbone}, {args.engine}):", out.strip())


if __name__ == "__main__":
    main()
