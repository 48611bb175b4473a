"""``scripts/make_big_catalogue.py``: distinct posters from a small source, by a fixed transform."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import make_big_catalogue as big  # noqa: E402


def _source(tmp_path: Path, sample_dir: Path, sample_rows: pd.DataFrame, n: int) -> Path:
    """The first ``n`` sample movies and their posters."""
    source = tmp_path / "source"
    (source / "images").mkdir(parents=True)
    rows = sample_rows.head(n)
    rows.to_csv(source / "MovieGenre.csv", index=False)
    for imdb in rows["imdbId"]:
        name = f"tt{int(imdb):07d}.jpg"
        (source / "images" / name).write_bytes((sample_dir / "images" / name).read_bytes())
    return source


def test_variants_are_distinct_posters_of_the_same_movies(tmp_path, sample_dir, sample_rows):
    from posterlens.data.catalog import read_catalog
    from posterlens.data.images import content_hash

    source = _source(tmp_path, sample_dir, sample_rows, 4)
    count = 4 * len(big.VARIANTS) - 1  # the last variant of the last movie left out
    facts = big.make(source, tmp_path / "big", count, "http://127.0.0.1:8000")
    assert facts["posters"] == facts["distinct_content_hashes"] == count

    made = read_catalog(tmp_path / "big" / "MovieGenre.csv", tmp_path / "big" / "images")
    original = read_catalog(source / "MovieGenre.csv", source / "images")
    assert len(made) == count and made["id"].is_unique
    assert len({content_hash(Path(p).read_bytes()) for p in made["path"]}) == count
    assert made["url"].str.startswith("http://127.0.0.1:8000/tt").all()
    for k in range(len(big.VARIANTS)):  # variant k of a movie: its id + k * ID_STRIDE, its genres and score
        part = made.iloc[4 * k:4 * (k + 1)].reset_index(drop=True)
        source_part = original.iloc[:len(part)]
        assert [int(i[2:]) for i in part["id"]] == [int(i[2:]) + k * big.ID_STRIDE for i in source_part["id"]]
        assert part["genres"].tolist() == source_part["genres"].tolist()
        assert part["score"].tolist() == source_part["score"].tolist()
    first = made["path"].iloc[0]  # the original variant is the source file itself
    assert Path(first).read_bytes() == (source / "images" / Path(first).name).read_bytes()


def test_the_transform_is_deterministic(tmp_path, sample_dir, sample_rows):
    source = _source(tmp_path, sample_dir, sample_rows, 2)
    count = 2 * len(big.VARIANTS)
    big.make(source, tmp_path / "one", count, "http://127.0.0.1:1")
    big.make(source, tmp_path / "two", count, "http://127.0.0.1:1")
    one = {p.name: p.read_bytes() for p in (tmp_path / "one" / "images").iterdir()}
    two = {p.name: p.read_bytes() for p in (tmp_path / "two" / "images").iterdir()}
    assert len(one) == count and one == two
