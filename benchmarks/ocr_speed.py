"""Benchmark: rapidocr variants on the development posters, seconds a poster and the text each keeps.

    .venv/bin/python benchmarks/ocr_speed.py [--n 100] [--images DIR] [--repeats 3] [--seed 0]
                                             [--variants "det+rec openvino,rec openvino"] [--int8]

"Today" is onnxruntime with ``OcrSettings()`` (``ocr_engine`` picks OpenVINO in bf16 where the
CPU has it since this benchmark: the "det+rec openvino" row). Each variant reads the same
seeded sample of posters (decoded once, as ``read_texts`` hands them
to the reader), interleaved: every poster goes through every variant, in an order that rotates
from poster to poster, ``--repeats`` times, so a machine shared with other jobs slows them all
alike. Times are a poster's median over the repeats; the table gives their min / median / mean
over the posters, wall clock and CPU (``process_time``: what an idle core would take), the median
of each poster's time over today's, and where the time goes (rapidocr's own det / rec times).

Text kept, against today's output on the same posters (lower-cased words of 2+ letters, as the
TF-IDF reads them): the share of today's words the variant finds (recall) and of its words that
today finds (precision), the recall on today's three tallest lines a poster (titles, taglines),
and the share of the catalogue titles' words found (against ``Title`` in ``MovieGenre.csv`` beside
the images folder, where there is one).

``--int8`` adds det and rec quantized to int8 by NNCF (OpenVINO), calibrated on 100 other
posters (about 3 minutes more).
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from posterlens.data.images import read_poster_bytes
from posterlens.features.ocr import ENGINES, OcrSettings, ocr_engine, poster_pixels, rapidocr_params

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "posters" / "images"
TODAY = OcrSettings(det_side=320, box_thresh=0.7, max_side=1024, threads=1)  # OcrSettings() when this was written
ORT, OV = ENGINES


def openvino(part: str) -> dict:
    """Only det (``"Det"``) or only rec (``"Rec"``) on OpenVINO: its default precision, bf16 where the CPU has it."""
    from rapidocr import EngineType

    return {"EngineConfig.openvino.inference_num_threads": 1, f"{part}.engine_type": EngineType.OPENVINO,
            f"{part}.model_path": rapidocr_params(TODAY, OV)[f"{part}.model_path"]}


# name -> (settings, engine, rapidocr params over theirs, how many boxes to recognise: 0 all)
VARIANTS: dict[str, tuple[OcrSettings, str, dict, int]] = {
    "today (onnxruntime)": (TODAY, ORT, {}, 0),
    "det at the poster's own size": (TODAY, ORT, {"Det.limit_type": "max", "Det.limit_side_len": 10_000}, 0),
    "det 256 short side (384 long)": (TODAY, ORT, {"Det.limit_type": "max", "Det.limit_side_len": 384}, 0),
    "det+rec openvino": (TODAY, OV, {}, 0),
    "det openvino": (TODAY, ORT, openvino("Det"), 0),
    "rec openvino": (TODAY, ORT, openvino("Rec"), 0),
    "rec batch 1": (TODAY, ORT, {"Rec.rec_batch_num": 1}, 0),
    "rec batch 16": (TODAY, ORT, {"Rec.rec_batch_num": 16}, 0),
    "4 largest boxes": (TODAY, ORT, {}, 4),
    "8 largest boxes": (TODAY, ORT, {}, 8),
    "2 threads": (OcrSettings(threads=2), ORT, {}, 0),
    "rec openvino + batch 16": (TODAY, ORT, {**openvino("Rec"), "Rec.rec_batch_num": 16}, 0),
    "det+rec openvino + 8 largest boxes": (TODAY, OV, {}, 8),
}
BASE = next(iter(VARIANTS))


def engine(settings: OcrSettings, runtime: str, overrides: dict, max_boxes: int):
    """rapidocr as ``ocr_reader`` builds it, with ``overrides``; ``max_boxes`` recognises only the tallest boxes."""
    from rapidocr import RapidOCR

    class Capped(RapidOCR):
        def detect_and_crop(self, img, op_record):
            crops, det = super().detect_and_crop(img, op_record)
            if max_boxes and len(crops) > max_boxes:  # crops are upright: their height is the letters'
                keep = sorted(np.argsort([-c.shape[0] for c in crops], kind="stable")[:max_boxes])
                crops, det.boxes, det.scores = [crops[i] for i in keep], det.boxes[keep], [det.scores[i] for i in keep]
            return crops, det

    return Capped(params={**rapidocr_params(settings, runtime), **overrides})


WORD = re.compile(r"(?u)\b\w\w+\b")  # TfidfVectorizer's default token_pattern


def words(text: str) -> collections.Counter:
    return collections.Counter(WORD.findall(text.lower()))


def tall_lines(result, k: int = 3) -> str:
    """The text of the ``k`` tallest lines (a box's short side: the height of its letters)."""
    if not result.txts:
        return ""
    boxes = np.asarray(result.boxes, dtype=float)
    sides = np.minimum(np.linalg.norm(boxes[:, 0] - boxes[:, 3], axis=1), np.linalg.norm(boxes[:, 0] - boxes[:, 1], axis=1))
    return " ".join(result.txts[i] for i in np.argsort(-sides, kind="stable")[:k])


def titles(images: Path) -> dict[str, str]:
    """File name -> catalogue title without its year, from ``MovieGenre.csv`` beside the images."""
    catalog = images.parent / "MovieGenre.csv"
    if not catalog.is_file():
        return {}
    with open(catalog, encoding="latin-1", newline="") as f:
        return {f"tt{int(row['imdbId']):07d}.jpg": re.sub(r"\s*\(\d{4}\)\s*$", "", row["Title"]) for row in csv.DictReader(f)}


def int8_models(images: Path, exclude: set[Path], folder: Path) -> dict:
    """rapidocr params for det and rec quantized by NNCF, calibrated on the inputs today's settings
    give them on 100 other posters."""
    os.environ["NNCF_CI"] = "1"  # nncf's telemetry off
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import nncf
    import openvino as ov

    class Recording:
        def __init__(self, session, store: list):
            self.session, self.store = session, store

        def __call__(self, x):
            self.store.append(x.copy())
            return self.session(x)

        def __getattr__(self, name):
            return getattr(self.session, name)

    reader, inputs = engine(TODAY, ORT, {}, 0), {"det": [], "rec": []}
    reader(np.full((64, 64, 3), 255, np.uint8))  # rapidocr loads each model on first use
    reader.recognize_txt([np.full((48, 96, 3), 255, np.uint8)])
    reader.text_det.session = Recording(reader.text_det.session, inputs["det"])
    reader.text_rec.session = Recording(reader.text_rec.session, inputs["rec"])
    others = [p for p in sorted(images.glob("*.jpg")) if p not in exclude]
    for path in random.Random(1).sample(others, 100):
        reader(poster_pixels(str(path), read_poster_bytes(path), TODAY.max_side)[:, :, ::-1].copy())
    params = {}
    for name, data in inputs.items():
        model = ov.Core().read_model(rapidocr_params(TODAY, OV)[f"{name.title()}.model_path"])
        extra = {"model_type": nncf.ModelType.TRANSFORMER} if name == "rec" else {}
        ov.save_model(nncf.quantize(model, nncf.Dataset(data), subset_size=len(data), **extra), str(folder / f"{name}.xml"))
        params[f"{name.title()}.model_path"] = str(folder / f"{name}.xml")
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated names; {BASE!r} is always run")
    parser.add_argument("--int8", action="store_true", help="add det+rec int8 (NNCF), calibrated on 100 other posters")
    args = parser.parse_args()
    files = random.Random(args.seed).sample(sorted(args.images.glob("*.jpg")), args.n)
    images = [poster_pixels(str(p), read_poster_bytes(p), TODAY.max_side)[:, :, ::-1].copy() for p in files]  # BGR, as the reader
    sizes = collections.Counter(f"{im.shape[1]}x{im.shape[0]}" for im in images).most_common(3)
    names = [BASE, *[v for v in args.variants.split(",") if v != BASE]]
    engines = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            start = time.perf_counter()
            engines[name] = engine(*VARIANTS[name])
            engines[name](images[0])
            print(f"{name}: ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        if args.int8:
            quantized = int8_models(args.images, set(files), Path(tmp))
            names.append("det+rec int8 (NNCF)")
            engines[names[-1]] = engine(TODAY, OV, quantized, 0)
            engines[names[-1]](images[0])
        wall = {n: np.zeros((args.repeats, len(images))) for n in names}
        cpu = {n: np.zeros((args.repeats, len(images))) for n in names}
        det, rec, results = collections.defaultdict(list), collections.defaultdict(list), {}
        for r in range(args.repeats):
            for i, image in enumerate(images):
                k = (i + r) % len(names)
                for name in names[k:] + names[:k]:
                    t0, c0 = time.perf_counter(), time.process_time()
                    result = engines[name](image)
                    wall[name][r, i], cpu[name][r, i] = time.perf_counter() - t0, time.process_time() - c0
                    if getattr(result, "elapse_list", None):
                        det[name].append(result.elapse_list[0])
                        rec[name].append(result.elapse_list[2])
                    if r == 0:
                        results[name, i] = result
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)

    title_words = titles(args.images)
    title_words = [set(words(title_words.get(p.name, ""))) for p in files]
    text = {key: words(" ".join(res.txts or ())) for key, res in results.items()}
    big = [words(tall_lines(results[BASE, i])) for i in range(len(images))]
    base = np.median(wall[BASE], axis=0)
    print(f"OCR engine picked here: {ocr_engine()}; {len(images)} posters (seed {args.seed}; sizes {', '.join(f'{s} ({c})' for s, c in sizes)}), "
          f"{args.repeats} repeats interleaved; s/poster = each poster's median over the repeats\n")
    print("| variant | wall min | wall median | wall mean | CPU median | vs today | det / rec (median) | boxes "
          "| today's words found | precision | tallest 3 lines found | title words found |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        per, per_cpu = np.median(wall[name], axis=0), np.median(cpu[name], axis=0)
        mine = [text[name, i] for i in range(len(images))]
        today = [text[BASE, i] for i in range(len(images))]
        found = sum(sum((a & b).values()) for a, b in zip(mine, today))
        recall = found / max(1, sum(sum(b.values()) for b in today))
        precision = found / max(1, sum(sum(a.values()) for a in mine))
        big_recall = sum(sum((a & b).values()) for a, b in zip(mine, big)) / max(1, sum(sum(b.values()) for b in big))
        n_title = sum(len(t) for t in title_words)
        title = f"{sum(len(t & set(a)) for t, a in zip(title_words, mine)) / n_title:.1%}" if n_title else "-"
        boxes = statistics.mean(len(results[name, i].txts or ()) for i in range(len(images)))
        split = f"{np.median(det[name]):.3f} / {np.median(rec[name]):.3f}" if det[name] else "-"
        print(f"| {name} | {per.min():.3f} | {np.median(per):.3f} | {per.mean():.3f} | {np.median(per_cpu):.3f} "
              f"| {np.median(per / base):.2f} | {split} | {boxes:.1f} | {recall:.1%} | {precision:.1%} | {big_recall:.1%} | {title} |")


if __name__ == "__main__":
    main()
