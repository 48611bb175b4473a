"""Benchmark: the embedding engines side by side on the same posters, with ratios and peak memory.

    .venv/bin/python benchmarks/embed_throughput.py [--catalog CSV] [--images DIR] [--backbone NAME]
        [--limit N] [--repeats R] [--setups onnx:32,onnx:8,openvino:8,openvino-int8:8] [--whole R]

Two measurements, each ``--repeats`` times, setups interleaved (A, B, C, A, B, C, ...) so
that a noisy machine hurts them alike; min and median are printed with the ratio of each
median to the first setup's:

- model: the network alone on one decoded batch list (``make_runner``), posters/s;
- cold embed: ``features.embed_files`` on ``--limit`` posters in a fresh process with an
  empty feature cache (the ONNX export and the int8 model are made once beforehand and
  copied in, so they are not timed): read, hash, decode and network, posters/s and the
  process's peak RSS;
- ``--whole R`` instead: the whole cold command the issue measures, ``posterlens embed`` of the
  catalogue into a fresh empty cache (ONNX exports, int8 models, the engines' timing and every
  poster; the default features and engine), ``R`` times: wall seconds and posters/s, min and median.

The first setup, ``onnx:32``, is the engine and batch size that ``embed`` used before
OpenVINO (its graph normalised in numpy then; here in the graph for every setup);
``openvino-int8`` is what ``auto`` runs for a job of ``features.INT8_AFTER`` posters or more
on a CPU with int8 dot products (VNNI).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "posters"


def _setups(text: str) -> list[tuple[str, int]]:
    return [(engine, int(batch)) for engine, batch in (item.split(":") for item in text.split(","))]


def _files(catalog: str, images: str, limit: int) -> list[str]:
    from posterlens.data import catalog as catalogs

    return catalogs.read_catalog(catalog, images)["path"].tolist()[:limit]


def one_pass(files: list[str], backbone: str, cache: str, engine: str, batch: int) -> dict:
    """A cold ``embed_files`` in this process (called in a fresh one)."""
    from posterlens.features import backbones
    from posterlens.features import embed as features

    start = time.perf_counter()
    result = features.embed_files(files, backbones.resolve(backbone), Path(cache), engine=engine,
                                  batch_size=batch, progress=False)
    seconds = time.perf_counter() - start
    return {"computed": result.computed, "seconds": seconds, "posters_per_s": len(files) / seconds,
            "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss`` it does not carry
    the parent's high-water mark over ``fork`` + ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_only(files: list[str], backbone_name: str, cache: Path, setups, repeats: int) -> dict:
    """posters/s of each runner on the same decoded posters."""
    import numpy as np

    from posterlens.data.images import decode, read_poster_bytes
    from posterlens.features import backbones, engines

    backbone = backbones.resolve(backbone_name)
    pixels = np.stack([np.asarray(decode(f, read_poster_bytes(f), (backbone.width, backbone.height)))
                       for f in files[:128]])
    runners = {setup: engines.make_runner(backbone, cache, setup[0]) for setup in setups}
    times: dict = {setup: [] for setup in setups}
    for _ in range(repeats):
        for (engine, batch), run in runners.items():
            run(pixels[:batch])  # warm
            start = time.perf_counter()
            for i in range(0, len(pixels), batch):
                run(pixels[i:i + batch])
            times[(engine, batch)].append(len(pixels) / (time.perf_counter() - start))
    return times


def _report(title: str, values: dict, unit: str) -> None:
    print(f"\n{title}")
    first = statistics.median(next(iter(values.values())))
    for (engine, batch), runs in values.items():
        median = statistics.median(runs)
        print(f"  {engine:>13} batch {batch:<3} {unit}: min {min(runs):7.1f}  median {median:7.1f}  "
              f"ratio {median / first:4.2f}x")


def whole(catalog: str, images: str, repeats: int) -> None:
    """The whole cold ``posterlens embed`` (empty cache), ``repeats`` times, in fresh processes."""
    posters = len(_files(catalog, images, 10 ** 9))
    seconds = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "posterlens", "embed", "--catalog", catalog, "--images", images,
                            "--cache", cache], check=True, capture_output=True)
            seconds.append(time.perf_counter() - start)
    print(f"whole cold `posterlens embed`, {posters} posters, {repeats} runs: wall s min {min(seconds):.1f} "
          f"median {statistics.median(seconds):.1f}; posters/s median {posters / statistics.median(seconds):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(SHARED / "MovieGenre.csv"))
    parser.add_argument("--images", default=str(SHARED / "images"))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--setups", default="onnx:32,onnx:8,openvino:8,openvino-int8:8")
    parser.add_argument("--whole", type=int, metavar="R", help="time the whole cold `posterlens embed` R times")
    parser.add_argument("--one-pass", nargs=3, metavar=("CACHE", "ENGINE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.whole:
        whole(args.catalog, args.images, args.whole)
        return
    files = _files(args.catalog, args.images, args.limit)
    if args.one_pass:
        cache, engine, batch = args.one_pass
        print(json.dumps(one_pass(files, args.backbone, cache, engine, int(batch))))
        return
    setups = _setups(args.setups)
    with tempfile.TemporaryDirectory() as tmp:
        exports = Path(tmp) / "exports"
        model = model_only(files, args.backbone, exports, setups, args.repeats)
        speed: dict = {s: [] for s in setups}
        memory: dict = {s: [] for s in setups}
        for r in range(args.repeats):
            for engine, batch in setups:
                cache = Path(tmp) / f"run-{engine}-{batch}-{r}"
                for made in ("onnx", "openvino"):  # the exports and int8 models, made by model_only
                    if (exports / made).is_dir():
                        shutil.copytree(exports / made, cache / made)
                out = subprocess.run([sys.executable, __file__, "--catalog", args.catalog, "--images", args.images,
                                      "--backbone", args.backbone, "--limit", str(args.limit),
                                      "--one-pass", str(cache), engine, str(batch)],
                                     check=True, capture_output=True, text=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                speed[(engine, batch)].append(result["posters_per_s"])
                memory[(engine, batch)].append(result["peak_rss_mb"])
                shutil.rmtree(cache)
    print(f"{args.backbone}, {len(files)} posters, {args.repeats} repeats")
    _report("model only (128 decoded posters)", model, "posters/s")
    _report(f"cold embed_files ({len(files)} posters, fresh process, empty cache)", speed, "posters/s")
    _report("cold embed_files peak RSS", memory, "MB")


if __name__ == "__main__":
    main()
