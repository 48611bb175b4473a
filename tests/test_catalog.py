"""Catalogue readers: three layouts, one table, clear errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from posterlens.catalog import COLUMNS, CatalogError, genre_matrix, genre_vocabulary, read_catalog


def test_moviegenre_layout(small_catalog):
    table = read_catalog(small_catalog)
    rows = pd.read_csv(small_catalog)
    assert list(table.columns) == COLUMNS
    assert len(table) == 8
    first = table.iloc[0]
    assert first["id"] == f"tt{rows.imdbId[0]:07d}"
    assert first["genres"] == rows.Genre[0].split("|")
    assert first["score"] == pytest.approx(rows["IMDB Score"][0])
    assert Path(first["path"]).is_file() and first["url"].startswith("https://")


def test_semicolon_and_latin1(tmp_path, small_catalog):
    rows = pd.read_csv(small_catalog)
    rows.loc[0, "Title"] = "Amélie (2001)"
    out = tmp_path / "latin.csv"
    rows.to_csv(out, sep=";", index=False, encoding="latin-1")
    table = read_catalog(out, tmp_path / "images")
    assert table["title"][0] == "Amélie (2001)"
    assert table["genres"][0] == rows.Genre[0].split("|")


def test_poster_found_by_url_file_name(tmp_path, small_catalog):
    rows = pd.read_csv(small_catalog)
    first = tmp_path / "images" / f"tt{rows.imdbId[0]:07d}.jpg"
    url_name = Path(rows.Poster[0].split("?")[0]).name
    first.rename(tmp_path / "images" / url_name)
    table = read_catalog(small_catalog)
    assert Path(table["path"][0]).name == url_name


def test_missing_posters_are_counted_and_skipped(small_catalog, caplog):
    images = small_catalog.parent / "images"
    for path in sorted(images.iterdir())[:3]:
        path.unlink()
    with caplog.at_level(logging.WARNING):
        table = read_catalog(small_catalog)
    assert len(table) == 5
    assert "3 of 8 movies have no poster file" in caplog.text
    kept = read_catalog(small_catalog, require_posters=False)
    assert len(kept) == 8 and kept["path"].isna().sum() == 3


def test_multilabel_layout(sample_dir):
    table = read_catalog(sample_dir / "multilabel.csv", sample_dir / "images")
    raw = pd.read_csv(sample_dir / "multilabel.csv")
    assert len(table) == len(raw)
    row = raw.iloc[0]
    expected = [c for c in raw.columns[2:] if c != "N/A" and row[c] == 1]
    assert table["genres"][0] == expected
    assert table["id"][0] == row["Id"] and Path(table["path"][0]).name == f"{row['Id']}.jpg"


def test_score_folder(tmp_path, sample_dir):
    posters = sorted((sample_dir / "images").iterdir())
    shutil.copy(posters[0], tmp_path / "Inception_8.8.jpg")
    shutil.copy(posters[1], tmp_path / "6.1_76240.jpg")
    table = read_catalog(tmp_path)
    assert dict(zip(table["title"], table["score"])) == {"76240": 6.1, "Inception": 8.8}
    (tmp_path / "no_score_here.jpg").write_bytes(b"x")
    with pytest.raises(CatalogError, match="no_score_here.jpg: no score in the file name"):
        read_catalog(tmp_path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda df: df.drop(columns=["Genre"]), r"missing column\(s\) Genre"),
        (lambda df: df.assign(**{"IMDB Score": ["7.1", "n/a"] + list(df["IMDB Score"][2:])}), r"row 3: IMDB Score 'n/a' is not a number"),
        (lambda df: df.assign(Genre=[""] + list(df.Genre[1:])), r"row 2 \(imdbId \d+\): empty Genre"),
        (lambda df: pd.concat([df, df.iloc[[1]]]), r"row 10: duplicate id tt\d{7} \(first seen at row 3\)"),
        (lambda df: df.assign(imdbId=["abc"] + list(df.imdbId[1:])), r"row 2: imdbId 'abc' is not a number"),
    ],
    ids=["missing-column", "bad-score", "empty-genres", "duplicate-id", "bad-id"],
)
def test_bad_input_names_file_row_and_problem(small_catalog, edit, message):
    rows = pd.read_csv(small_catalog, dtype=str, keep_default_na=False)
    edit(rows).to_csv(small_catalog, index=False)
    with pytest.raises(CatalogError, match=str(small_catalog.name) + ".*" + message):
        read_catalog(small_catalog)


def test_multilabel_row_without_genre(tmp_path, sample_dir):
    raw = pd.read_csv(sample_dir / "multilabel.csv").head(3)
    raw.loc[1, raw.columns[2:]] = 0
    raw.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(CatalogError, match=r"train.csv: row 3 \(Id tt\d+\): no genre column is 1"):
        read_catalog(tmp_path / "train.csv", sample_dir / "images")


def test_genre_matrix_and_vocabulary(small_catalog):
    table = read_catalog(small_catalog)
    genres = genre_vocabulary(table)
    y = genre_matrix(table, genres)
    assert y.shape == (8, len(genres))
    assert y.sum() == sum(len(g) for g in table["genres"])
    counts = y.sum(axis=0)
    assert list(counts) == sorted(counts, reverse=True)
