"""The prediction files, in the original design's formats, from ``Predictor.predict``'s table.

``predictions_score.csv`` (``file,label``, then ``score_low,score_high``; from a model with a
score model), ``predictions_genre.csv`` (``file,predicted_labels,raw_probs``, then
``genre_confidence,domain_score,in_domain``; from a model with genres; a score-only model's
score file has the domain columns),
``predictions_final.csv`` (those merged on the file) and ``errors.csv`` (``file,reason``);
each written atomically (``safeio``). A score-only model (trained on a folder of
``Title_8.8.jpg`` posters) writes the original project's score file and no genre file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from posterlens import safeio

__all__ = ["part_tables", "merge_tables", "write_parts", "merge_files", "final_table", "write"]


def part_tables(predictions: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Score, genre and error tables in the original formats, from ``Predictor.predict``'s table."""
    t, genres = predictions, predictions.attrs["genres"]
    parts = {}
    domain = {"domain_score": t["domain_score"].round(4), "in_domain": t["in_domain"]}
    if predictions.attrs.get("has_score", True):
        parts["predictions_score.csv"] = pd.DataFrame({"file": t["file"], "label": t["score"].round(1),
                                                       "score_low": t["score_low"].round(1),
                                                       "score_high": t["score_high"].round(1),
                                                       **({} if genres else domain)})
    if genres:
        parts["predictions_genre.csv"] = pd.DataFrame({
            "file": t["file"],
            "predicted_labels": ["|".join(g) for g in t["genres"]],
            "raw_probs": [json.dumps({g: round(float(p), 4) for g, p in zip(genres, row)}, separators=(",", ":"))
                          for row in t[genres].itertuples(index=False)],
            "genre_confidence": t["genre_confidence"].round(4), **domain,
        })
    return {**parts, "errors.csv": predictions.attrs["errors"]}


def merge_tables(score: pd.DataFrame | None, genre: pd.DataFrame | None) -> pd.DataFrame:
    """``predictions_final.csv``: the score and genre tables merged on the file (either may be absent)."""
    if score is None or genre is None:
        return (genre if score is None else score.rename(columns={"label": "score"})).reset_index(drop=True)
    return score.rename(columns={"label": "score"}).merge(genre, on="file", how="outer", validate="one_to_one")


def write_parts(predictions: pd.DataFrame, out: Path) -> dict[str, Path]:
    """Write the score, genre and error CSV files into ``out``."""
    safeio.make_dir(out)
    return {name: safeio.write_csv(table, out / name) for name, table in part_tables(predictions).items()}


def merge_files(out: Path) -> Path:
    """Merge ``predictions_score.csv`` and ``predictions_genre.csv`` in ``out`` into ``predictions_final.csv``."""
    score, genre = out / "predictions_score.csv", out / "predictions_genre.csv"
    score = pd.read_csv(score, dtype={"file": str}) if score.is_file() else None
    genre = pd.read_csv(genre, dtype={"file": str}, keep_default_na=False) if genre.is_file() else None
    return safeio.write_csv(merge_tables(score, genre), out / "predictions_final.csv")


def final_table(predictions: pd.DataFrame, catalog: pd.DataFrame | None = None, wide: bool = False) -> pd.DataFrame:
    """``predictions_final.csv``: with ``id,title`` after the file when the posters came from a
    catalogue (its ``path,id,title``), ``similar`` when predicted, and with ``wide`` one
    probability column a genre."""
    parts = part_tables(predictions)
    final = merge_tables(parts.get("predictions_score.csv"), parts.get("predictions_genre.csv"))
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
