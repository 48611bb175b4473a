"""Time catalogue parsing as the catalogue grows: 10k, 100k and 1M rows of MovieGenre.csv.

Synthetic catalogues are the bundled sample's rows repeated with new ids (a temporary
folder). Each size is measured in a fresh subprocess: ``read_catalog`` (as the pipeline's
``check_inputs`` calls it, ``require_posters=False``), then ``write_shards`` (the shard
files the mapped tasks read), with the seconds of each and the process's peak resident
memory (``ru_maxrss``) above what it held after the imports. Run:

    .venv/bin/python benchmarks/scale_catalog.py [--sizes 10000 100000 1000000] [--shard-size 500]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample" / "MovieGenre.csv"


def write_catalog(path: Path, rows: int) -> None:
    """``rows`` movies: the sample's rows in turn, each with an id and poster URL of its own."""
    with SAMPLE.open(newline="") as f:
        sample = list(csv.DictReader(f))
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(sample[0]))
        out.writeheader()
        for i in range(rows):
            row = dict(sample[i % len(sample)], imdbId=str(i + 1))
            row["Poster"] = row["Poster"].replace("@._V1_", f"{i}@._V1_")
            out.writerow(row)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(catalog: Path, shard_size: int) -> dict:
    """One size, in this process: parse, then cut into shard files."""
    from posterlens.app.pipeline import PipelineConfig, write_shards
    from posterlens.data import catalog as catalogs

    baseline = _rss_mib()
    with tempfile.TemporaryDirectory() as out:
        config = PipelineConfig(catalog=str(catalog), images=str(Path(out) / "images"), out=out, shard_size=shard_size)
        start = time.perf_counter()
        movies = catalogs.read_catalog(config.catalog, config.images, require_posters=False)
        parsed = time.perf_counter()
        shards = write_shards(movies, config)
        done = time.perf_counter()
    return {"rows": len(movies), "parse_s": parsed - start, "shards_s": done - parsed, "shards": len(shards),
            "peak_mib": _rss_mib() - baseline, "file_mib": catalog.stat().st_size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--shard-size", type=int, default=500, help="the DAG's default")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # one size, in a subprocess
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.shard_size)))
        return

    print(f"{'rows':>10} {'CSV MiB':>8} {'parse s':>8} {'rows/s':>9} {'shards s':>9} {'peak MiB':>9} "
          f"{'KiB/row':>8} {'x time':>7} {'x mem':>6}")
    previous = None
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.sizes:
            path = Path(tmp) / f"MovieGenre-{rows}.csv"
            write_catalog(path, rows)
            done = subprocess.run([sys.executable, __file__, "--measure", str(path), "--shard-size", str(args.shard_size)],
                                  check=True, capture_output=True, text=True)
            r = json.loads(done.stdout.splitlines()[-1])
            path.unlink()
            growth = (f"{r['parse_s'] / previous['parse_s']:7.1f} {r['peak_mib'] / previous['peak_mib']:6.1f}"
                      if previous else f"{'':>7} {'':>6}")
            print(f"{r['rows']:>10,} {r['file_mib']:8.1f} {r['parse_s']:8.2f} {r['rows'] / r['parse_s']:9,.0f} "
                  f"{r['shards_s']:9.2f} {r['peak_mib']:9.0f} {r['peak_mib'] * 1024 / r['rows']:8.2f} {growth}", flush=True)
            previous = r


if __name__ == "__main__":
    main()
