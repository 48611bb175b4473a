"""Catalogue readers: three layouts, one table, clear errors."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from posterlens.data import catalog
from posterlens.data.catalog import COLUMNS, CatalogError, genre_matrix, genre_vocabulary, read_catalog


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


def test_score_folder(tmp_path, sample_dir, caplog):
    posters = sorted((sample_dir / "images").iterdir())
    shutil.copy(posters[0], tmp_path / "Inception_8.8.jpg")
    shutil.copy(posters[1], tmp_path / "6.1_76240.jpg")
    table = read_catalog(tmp_path)
    assert dict(zip(table["title"], table["score"])) == {"76240": 6.1, "Inception": 8.8}
    (tmp_path / "no_score_here.jpg").write_bytes(b"x")
    with caplog.at_level("WARNING"):
        table = read_catalog(tmp_path)  # an ordinary poster folder embeds and predicts
    assert table.set_index("title")["score"].isna().to_dict() == {"76240": False, "Inception": False, "no score here": True}
    assert "1 of 3 posters have no score from 0 to 10 in their file name (no_score_here.jpg)" in caplog.text


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda df: df.drop(columns=["Genre"]), r"missing column\(s\) Genre"),
        (lambda df: df.assign(**{"IMDB Score": ["7.1", "n/a"] + list(df["IMDB Score"][2:])}), r"row 3: IMDB Score 'n/a' is not a number"),
        (lambda df: pd.concat([df, df.iloc[[1]]]), r"row 10: duplicate id tt\d{7} \(first seen at row 3\)"),
        (lambda df: df.assign(imdbId=["abc"] + list(df.imdbId[1:])), r"row 2: imdbId 'abc' is not a number"),
    ],
    ids=["missing-column", "bad-score", "duplicate-id", "bad-id"],
)
def test_bad_input_names_file_row_and_problem(small_catalog, edit, message):
    rows = pd.read_csv(small_catalog, dtype=str, keep_default_na=False)
    edit(rows).to_csv(small_catalog, index=False)
    with pytest.raises(CatalogError, match=str(small_catalog.name) + ".*" + message):
        read_catalog(small_catalog)


def test_multilabel_row_without_genre_is_skipped(tmp_path, sample_dir, caplog):
    raw = pd.read_csv(sample_dir / "multilabel.csv").head(3)
    raw.loc[1, raw.columns[2:]] = 0
    raw.to_csv(tmp_path / "train.csv", index=False)
    with caplog.at_level(logging.WARNING):
        table = read_catalog(tmp_path / "train.csv", sample_dir / "images")
    assert list(table["id"]) == [raw.Id[0], raw.Id[2]]
    assert "train.csv: 1 row(s) with neither genres nor a score skipped: 3" in caplog.text


def test_genre_matrix_and_vocabulary(small_catalog):
    table = read_catalog(small_catalog)
    genres = genre_vocabulary(table)
    y = genre_matrix(table, genres)
    assert y.shape == (8, len(genres))
    assert y.sum() == sum(len(g) for g in table["genres"])
    counts = y.sum(axis=0)
    assert list(counts) == sorted(counts, reverse=True)


# --------------------------------------------------------------------------- hostile catalogues

HEADER = "imdbId,Imdb Link,Title,IMDB Score,Genre,Poster\n"


def _write(path: Path, lines: list[bytes | str]) -> Path:
    path.write_bytes(b"".join(x if isinstance(x, bytes) else x.encode() for x in lines))
    return path


def test_empty_cells_and_short_rows(tmp_path):
    path = _write(tmp_path / "MovieGenre.csv", [
        HEADER,
        "1,l,A (2001),7.1,Drama,https://x.org/a.jpg\n",
        "2,l,B (2002),6.0,Comedy,\n",  # empty Poster
        "3,l,C (2003),5.0,Horror\n",  # Poster cell missing entirely
        "4,l,,,Drama|Comedy,https://x.org/d.jpg\n",  # empty title and score
    ])
    table = read_catalog(path, require_posters=False)
    assert list(table.columns) == COLUMNS and list(table["id"]) == [f"tt000000{i}" for i in range(1, 5)]
    assert list(table["url"]) == ["https://x.org/a.jpg", None, None, "https://x.org/d.jpg"]
    assert table["path"].tolist() == [None] * 4
    assert table["score"].tolist()[:3] == [7.1, 6.0, 5.0] and math.isnan(table["score"][3])
    assert table["title"][3] == "" and table["genres"][3] == ["Drama", "Comedy"]


def test_rows_without_genres_or_score(tmp_path, caplog):
    path = _write(tmp_path / "MovieGenre.csv", [
        HEADER,
        "1,l,A,7.1,,\n",  # score only: kept for the score
        "2,l,B,,,\n",  # nothing: skipped
        ",,,,,\n",  # an empty row: skipped
        "4,l,D,,Drama,\n",
    ])
    with caplog.at_level(logging.WARNING):
        table = read_catalog(path, require_posters=False)
    assert list(table["id"]) == ["tt0000001", "tt0000004"] and table["genres"][0] == []
    assert "2 row(s) with neither genres nor a score skipped: 3, 4" in caplog.text
    assert "1 row(s) have no genre and are kept for their score only: 2" in caplog.text


@pytest.mark.parametrize("score", ["abc", "11", "-1", "nan"])
def test_bad_scores_name_file_and_row(tmp_path, score):
    path = _write(tmp_path / "m.csv", [HEADER, "1,l,A,7,Drama,\n", f"2,l,B,{score},Drama,\n"])
    with pytest.raises(CatalogError, match=rf"m.csv: row 3: IMDB Score '{score}' is not"):
        read_catalog(path, require_posters=False)


def test_genre_names_are_normalised(tmp_path):
    path = _write(tmp_path / "m.csv", [
        HEADER,
        "1,l,A,7,Drama|DRAMA|Drama\u200b| sci-fi |Reality-tv,\n",
        "2,l,B,7,ＤＲＡＭＡ|Sci-Fi|film-noir|\ufeffComedy,\n",  # full-width letters (NFKC), a BOM
    ])
    table = read_catalog(path, require_posters=False)
    assert table["genres"][0] == ["Drama", "Sci-Fi", "Reality-TV"]
    assert table["genres"][1] == ["Drama", "Sci-Fi", "Film-Noir", "Comedy"]
    assert genre_vocabulary(table) == ["Drama", "Sci-Fi", "Comedy", "Film-Noir", "Reality-TV"]


def test_mixed_encodings_one_warning_naming_the_lines(tmp_path, caplog):
    lines = [HEADER.encode(), "1,l,Amélie,7,Drama,\n".encode()]  # UTF-8
    lines += [f"{i},l,Caf\xe9 {i},7,Drama,\n".encode("latin-1") for i in range(2, 14)]  # 12 Latin-1 lines
    lines += ["14,l,\u201cQuoted\u201d,7,Drama,\n".encode("cp1252"), b"15,l,Odd \x81,7,Drama,\n"]
    path = _write(tmp_path / "m.csv", lines)
    with caplog.at_level(logging.WARNING):
        table = read_catalog(path, require_posters=False)
    assert table["title"][0] == "Amélie" and table["title"][1] == "Café 2"
    assert table["title"][13] == "\u201cQuoted\u201d" and table["title"][14] == "Odd \x81"
    warnings = [r for r in caplog.records if "not UTF-8" in r.message]
    assert len(warnings) == 1
    assert "m.csv: line(s) 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 and 4 more are not UTF-8" in warnings[0].message


def test_utf8_with_bom_and_semicolons(tmp_path, caplog):
    path = _write(tmp_path / "m.csv", ["\ufeff" + HEADER.replace(",", ";"), "1;l;Amélie;7,5;Drama;\n"])
    with caplog.at_level(logging.WARNING):
        table = read_catalog(path, require_posters=False)
    assert (table["title"][0], table["score"][0]) == ("Amélie", 7.5) and not caplog.records


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"\n\nimdbId\n", "the file is empty"),
        (HEADER.encode("utf-16"), "UTF-16 text is not supported"),
        (b'imdbId,Title,IMDB Score,Genre\n1,"unclosed,7,Drama\n', "not a readable CSV"),
    ],
    ids=["empty", "blank-first-line", "utf-16", "unclosed-quote"],
)
def test_unreadable_files(tmp_path, content, message):
    path = _write(tmp_path / "m.csv", [content])
    with pytest.raises(CatalogError, match=f"m.csv: {message}"):
        read_catalog(path, require_posters=False)


def test_row_numbers_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "_CHUNK_ROWS", 3)
    rows = [f"{i},l,T{i},7,Drama,\n" for i in range(1, 9)]
    path = _write(tmp_path / "m.csv", [HEADER, *rows, "3,l,again,7,Drama,\n"])
    with pytest.raises(CatalogError, match=r"m.csv: row 10: duplicate id tt0000003 \(first seen at row 4\)"):
        read_catalog(path, require_posters=False)
    path = _write(tmp_path / "m.csv", [HEADER, *rows, "9,l,T9,x,Drama,\n"])
    with pytest.raises(CatalogError, match=r"m.csv: row 10: IMDB Score 'x'"):
        read_catalog(path, require_posters=False)
    assert len(read_catalog(_write(tmp_path / "m.csv", [HEADER, *rows]), require_posters=False)) == 8


def test_score_is_the_last_number_in_a_file_name(tmp_path, sample_dir):
    poster = next((sample_dir / "images").iterdir())
    for name in ["8_Mile_(2002)_7.1.jpg", "6.1_76240.jpg", "2001_A_Space_Odyssey_8.3.jpg", ".Hidden_5.0.jpg"]:
        shutil.copy(poster, tmp_path / name)
    table = read_catalog(tmp_path)
    assert dict(zip(table["title"], table["score"])) == {
        "8 Mile (2002)": 7.1, "76240": 6.1, "2001 A Space Odyssey": 8.3}
    shutil.copy(poster, tmp_path / "Blade_Runner_2049.jpg")
    assert read_catalog(tmp_path).set_index("title")["score"].isna()["Blade Runner 2049"]  # 2049 is no score


def test_a_first_row_with_an_extra_cell_is_named_not_shifted(tmp_path):
    path = tmp_path / "MovieGenre.csv"
    path.write_text("imdbId,Imdb Link,Title,IMDB Score,Genre,Poster\n1,l,T,5.0,Drama,http://x/a.jpg,EXTRA\n")
    with pytest.raises(CatalogError, match="a row has more cells than the header has columns"):
        read_catalog(path, require_posters=False)


def test_a_genre_cell_with_a_million_names_is_refused(tmp_path):
    path = tmp_path / "MovieGenre.csv"
    path.write_text("imdbId,Imdb Link,Title,IMDB Score,Genre,Poster\n1,l,T,5.0," + "|".join(
        f"G{i}" for i in range(1_000_000)) + ",\n")
    with pytest.raises(CatalogError, match="row 2: 1,000,000 genres; a movie has at most 50"):
        read_catalog(path, require_posters=False)
