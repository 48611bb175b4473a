"""The prediction files, in the original design's formats, from ``Predictor.predict``'s table.

``predictions_score.csv`` (``file,label``), ``predictions_genre.csv``
(``file,predicted_labels,raw_probs``), ``predictions_final.csv`` (both merged on the file)
and ``errors.csv`` (``file,reason``); each written atomically (``safeio``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from posterlens import safeio

__all__ = ["image_files", "part_tables", "merge_tables", "write_parts", "merge_files", "final_table", "write"]


def image_files(folder: Path) -> list[Path]:
    """Every file in a folder that may be a poster (bad ones are reported, not skipped)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() not in {".csv", ".json", ".txt", ".md"})


def part_tables(predictions: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Score, genre and error tables in the original formats, from ``Predictor.predict``'s table."""
    t, genres = predictions, predictions.attrs["genres"]
    score = pd.DataFrame({"file": t["file"], "label": t["score"].round(1)})
    genre = pd.DataFrame({
        "file": t["file"],
        "predicted_labels": ["|".join(g) for g in t["genres"]],
        "raw_probs": [json.dumps({g: round(float(p), 4) for g, p in zip(genres, row)}, separators=(",", ":"))
                      for row in t[genres].itertuples(index=False)],
    })
    return {"predictions_score.csv": score, "predictions_genre.csv": genre, "errors.csv": predictions.attrs["errors"]}


def merge_tables(score: pd.DataFrame, genre: pd.DataFrame) -> pd.DataFrame:
    """``predictions_final.csv``: the score and genre tables merged on the file."""
    return score.rename(columns={"label": "score"}).merge(genre, on="file", how="outer", validate="one_to_one")


def write_parts(predictions: pd.DataFrame, out: Path) -> dict[str, Path]:
    """Write the score, genre and error CSV files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    return {name: safeio.write_csv(table, out / name) for name, table in part_tables(predictions).items()}


def merge_files(out: Path) -> Path:
    """Merge ``predictions_score.csv`` and ``predictions_genre.csv`` in ``out`` into ``predictions_final.csv``."""
    score = pd.read_csv(out / "predictions_score.csv", dtype={"file": str})
    genre = pd.read_csv(out / "predictions_genre.csv", dtype={"file": str}, keep_default_na=False)
    return safeio.write_csv(merge_tables(score, genre), out / "predictions_final.csv")


def final_table(predictions: pd.DataFrame, catalog: pd.DataFrame | None = None, wide: bool = False) -> pd.DataFrame:
    """``predictions_final.csv``: with ``id,title`` after the file when the posters came from a
    catalogue (its ``path,id,title``), ``similar`` when predicted, and with ``wide`` one
    probability column a genre."""
    parts = part_tables(predictions)
    final = merge_tables(parts["predictions_score.csv"], parts["predictions_genre.csv"])
    if catalog is not None:
        names = catalog.assign(file=catalog["path"].astype(str))[["file", "id", "title"]].drop_duplicates("file")
        final = final.merge(names, on="file", how="left")
        final = final[["file", "id", "title", *[c for c in final.columns if c not in ("file", "id", "title")]]]
    if "similar" in predictions:
        final["similar"] = predictions["similar"].to_numpy()
    if wide:
        genres = predictions.attrs["genres"]
        final = pd.concat([final, predictions[genres].round(4).reset_index(drop=True)], axis=1)
    return final


def write(predictions: pd.DataFrame, out: Path, catalog: pd.DataFrame | None = None, wide: bool = False) -> dict[str, Path]:
    """Write all four CSV files; ``catalog`` and ``wide`` as in ``final_table``."""
    written = write_parts(predictions, out)
    written["predictions_final.csv"] = safeio.write_csv(final_table(predictions, catalog, wide), out / "predictions_final.csv")
    return written
