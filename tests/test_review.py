"""The review queue: corrections stored in SQLite and PostgreSQL, the page in Chromium, a retrain on them."""

from __future__ import annotations

import shutil
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import posterlens
from posterlens.app import review, serve
from posterlens.app.cli import app
from posterlens.data import catalog as catalogs
from posterlens.data import corrections
from posterlens.data.corrections import Correction, CorrectionsError

REPO = Path(__file__).resolve().parents[1]
GENRES = ["Action", "Comedy", "Drama", "Horror"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,1400")


# --- storage: SQLite and PostgreSQL ----------------------------------------------------------

@pytest.fixture(scope="module")
def postgres():
    """PostgreSQL alone, started as tests/test_celery.py's cluster starts it (skipped where it is not installed)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import celery_cluster

    pytest.importorskip("psycopg2")
    missing = [n for n, path in celery_cluster.server_binaries().items() if path is None and n != "redis-server"]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/install_system_packages.sh installs PostgreSQL)")
    with celery_cluster.Cluster(postgres_only=True) as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    """A new corrections database: a SQLite file, or a database on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "reviews.sqlite")
    return request.getfixturevalue("postgres").database_url(f"review_{uuid.uuid4().hex[:8]}")


def test_corrections_round_trip(db):
    engine = corrections.open_db(db)
    first = Correction("tt1", ["Drama", "Action"], 7.5, False, "ann", file="tt1.jpg", key="ab" * 16,
                       model_genres=["Drama"], model_score=6.25, model_confidence=0.4, model_domain_score=0.9,
                       model="released@0123456789ab")
    stored = corrections.record(engine, first, GENRES)
    assert stored.genres == ["Action", "Drama"]  # the model's order
    corrections.record(engine, Correction("tt2", ["Comedy"], None, True, "bob"), GENRES)
    later = corrections.record(engine, Correction("tt1", ["Horror"], 3.0, False, "bob"), GENRES)

    every = corrections.list_corrections(engine, latest=False)
    assert every["poster_id"].tolist() == ["tt1", "tt2", "tt1"]
    row = every.iloc[0]
    for name in ("file", "key", "model_genres", "model_score", "model_confidence", "model_domain_score", "model",
                 "reviewer", "accepted", "score"):
        assert row[name] == getattr(stored, name), name
    assert row["genres"] == ["Action", "Drama"]
    assert abs(row["reviewed_at"] - stored.reviewed_at) < timedelta(milliseconds=1)
    assert row["reviewed_at"].tzinfo is not None
    assert abs(row["reviewed_at"] - datetime.now(timezone.utc)) < timedelta(minutes=5)
    latest = corrections.list_corrections(engine).set_index("poster_id")
    assert latest.loc["tt1", "genres"] == later.genres and latest.loc["tt1", "reviewer"] == "bob"
    assert pd.isna(latest.loc["tt2", "score"]) and bool(latest.loc["tt2", "accepted"])

    catalogue = pd.DataFrame({"id": ["tt1", "tt2", "tt3"], "title": ["a", "b", "c"],
                              "genres": [["Drama"], ["Drama"], ["Action"]], "score": [6.0, 5.0, np.nan],
                              "path": [None] * 3, "url": [None] * 3})
    table, applied = corrections.apply_corrections(catalogue, engine)
    assert applied == 2
    assert table["genres"].tolist() == [["Horror"], ["Comedy"], ["Action"]]
    np.testing.assert_array_equal(table["score"], [3.0, 5.0, np.nan])  # no score in a review: the catalogue's stays
    assert catalogue["genres"].tolist() == [["Drama"], ["Drama"], ["Action"]]  # the input is left as it was
    engine.dispose()


def test_a_url_keeps_its_password_for_the_driver_and_hides_it_when_shown():
    url = corrections.database_url("postgresql://ann:s3cret@db.example:5433/reviews")
    assert corrections.database_url(url).password == "s3cret" and url.drivername == "postgresql+psycopg2"
    assert corrections.shown(url) == "postgresql+psycopg2://ann:***@db.example:5433/reviews"


def test_hostile_values_go_in_as_bound_parameters(tmp_path):
    engine = corrections.open_db(tmp_path / "r.sqlite")
    sneaky = "tt1'); DROP TABLE corrections; --"
    corrections.record(engine, Correction(sneaky, ["Drama"], 5.0, False, "x'--"), GENRES)
    assert corrections.list_corrections(engine)["poster_id"].tolist() == [sneaky]


@pytest.mark.parametrize("change, words", [
    ({"genres": ["Drama", "Western"]}, "'Western' not among the model's genres"),
    ({"genres": []}, "at least one genre"),
    ({"score": 10.5}, "from 0 to 10"), ({"score": -1}, "from 0 to 10"), ({"score": float("nan")}, "from 0 to 10"),
    ({"score": "7"}, "from 0 to 10"), ({"score": True}, "from 0 to 10"),
    ({"reviewer": " "}, "reviewer: must be 1 to"), ({"poster_id": "x" * 201}, "poster id: must be 1 to"),
])
def test_bad_corrections_are_refused(tmp_path, change, words):
    engine = corrections.open_db(tmp_path / "r.sqlite")
    good = {"poster_id": "tt1", "genres": ["Drama"], "score": 7.0, "accepted": False, "reviewer": "ann"}
    with pytest.raises(CorrectionsError, match=words):
        corrections.record(engine, Correction(**{**good, **change}), GENRES)
    assert corrections.list_corrections(engine).empty


def test_bad_databases_are_refused_in_one_line_without_the_password(tmp_path):
    port = 9  # discard: nothing listens on it here
    with pytest.raises(CorrectionsError) as refused:
        corrections.open_db(f"postgresql://ann:s3cret-pw@127.0.0.1:{port}/reviews")
    message = str(refused.value)
    assert "s3cret" not in message and "--review-db" in message and "***" in message and "\n" not in message
    for value, words in [("mysql://ann:pw@host/db", "mysql:// is not supported"),
                         ("postgresql://ann:pw@host:notaport/db", "not a valid postgresql:// URL"),
                         (str(tmp_path), "not a regular file")]:
        with pytest.raises(CorrectionsError, match=words) as refused:
            corrections.open_db(value)
        assert "pw" not in str(refused.value)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(CorrectionsError, match="cannot open the database"):
        corrections.open_db(junk)
    with pytest.raises(CorrectionsError, match="no such file"):
        corrections.open_db(tmp_path / "missing.sqlite", "--corrections", create=False)
    empty = tmp_path / "other.sqlite"
    sa.create_engine(f"sqlite:///{empty}").connect().close()
    with pytest.raises(CorrectionsError, match="not a posterlens review database"):
        corrections.open_db(empty, "--corrections", create=False)


def test_a_tampered_database_is_refused_when_training_reads_it(tmp_path):
    engine = corrections.open_db(tmp_path / "r.sqlite")
    with engine.begin() as conn:  # what record() would never write
        conn.execute(sa.insert(corrections.TABLE).values(
            poster_id="tt1", genres="Drama", score=42.0, accepted=False, reviewer="x",
            reviewed_at=datetime.now(timezone.utc), model_genres=[]))
    catalogue = pd.DataFrame({"id": ["tt1"], "title": ["a"], "genres": [["Drama"]], "score": [6.0],
                              "path": [None], "url": [None]})
    with pytest.raises(CorrectionsError, match="review of 'tt1' .* is damaged"):
        corrections.apply_corrections(catalogue, engine)


# --- the queue and its API ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def predictor(shared_cache):
    return posterlens.load(None, shared_cache)


@pytest.fixture
def queue(predictor, small_catalog, tmp_path) -> review.ReviewQueue:
    return review.ReviewQueue.build(predictor, small_catalog, None, None, "tester")


def test_queue_is_least_confident_first_and_writes_beside_the_catalogue(queue, small_catalog, predictor):
    assert queue.db == str((small_catalog.parent / review.DB_NAME).resolve())
    assert len(queue.items) == 8 and queue.genres == predictor.model.genres
    assert queue.items["confidence"].is_monotonic_increasing
    assert queue.model.startswith("released@")


class _Judging:
    """A predictor whose predictions carry the model's own confidence, domain score and score interval."""

    def __init__(self, predictor):
        self._predictor = predictor

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def predict(self, *args, **kwargs) -> pd.DataFrame:
        table = self._predictor.predict(*args, **kwargs)
        n = len(table)
        judged = table.assign(genre_confidence=np.linspace(0.9, 0.1, n), domain_score=np.linspace(0.8, 0.05, n),
                              in_domain=np.arange(n) < n - 1, score_low=table["score"] - 1, score_high=table["score"] + 1)
        judged.attrs = table.attrs
        return judged


def test_queue_orders_by_the_models_confidence_and_flags_what_is_out_of_domain(predictor, small_catalog):
    queue = review.ReviewQueue.build(_Judging(predictor), small_catalog, None, None, "tester")
    items = queue.queue()["items"]
    assert [item["confidence"] for item in items] == pytest.approx(np.linspace(0.1, 0.9, 8), abs=1e-3)
    assert [item["in_domain"] for item in items] == [False] + [True] * 7
    assert items[0]["domain_score"] == pytest.approx(0.05)
    assert items[0]["score_high"] - items[0]["score_low"] == pytest.approx(2, abs=1e-3)


def test_review_api_takes_json_from_its_own_page_only(predictor, queue):
    web = serve.create_app(predictor)
    review.mount(web, queue)
    first, second = queue.items["id"].iloc[:2]
    with TestClient(web, base_url="http://127.0.0.1:8000") as client:
        listed = client.get("/api/review/queue", params={"limit": 3}).json()
        assert [item["id"] for item in listed["items"]] == queue.items["id"].iloc[:3].tolist()
        assert listed["total"] == 8 and listed["reviewed"] == 0 and listed["reviewer"] == "tester"
        assert all(item["in_domain"] is not False for item in listed["items"])  # the sample's posters: none flagged
        assert client.get(f"/review/poster/{first}").headers["content-type"] == "image/jpeg"
        assert "review.js" in client.get("/review").text

        accepted = client.post(f"/api/review/{first}", json={"accepted": True})
        assert accepted.status_code == 200, accepted.text
        model_genres = list(queue.items["genres"].iloc[0])
        assert accepted.json()["genres"] == [g for g in queue.genres if g in model_genres]
        refusals = [
            (client.post(f"/api/review/{second}", content='{"accepted": true}', headers={"content-type": "text/plain"}),
             415, "not_json"),
            (client.post(f"/api/review/{second}", json={"accepted": True}, headers={"origin": "http://evil.example"}),
             403, "cross_origin"),
            (client.post(f"/api/review/{second}", json={"accepted": True}, headers={"host": "evil.example"}),
             403, "bad_host"),
            (client.post("/api/review/tt-none", json={"accepted": True}), 404, "not_in_queue"),
            (client.post(f"/api/review/{second}", json={"genres": ["Western"], "score": 5}), 422, "bad_review"),
            (client.post(f"/api/review/{second}", json={"genres": ["Drama"], "score": 11}), 422, "bad_review"),
            (client.post(f"/api/review/{second}", json={"genres": "Drama", "score": 5}), 422, "bad_genres"),
            (client.post(f"/api/review/{second}", content=b"[1, 2", headers={"content-type": "application/json"}),
             400, "bad_json"),
            (client.post(f"/api/review/{second}", content=b" " * 70_000, headers={"content-type": "application/json"}),
             413, "too_large"),
        ]
        for response, status, code in refusals:
            assert (response.status_code, response.json()["error"]) == (status, code), response.text
        listed = client.get("/api/review/queue").json()
    assert listed["reviewed"] == 1 and listed["items"][0]["review"]["accepted"] is True
    assert corrections.list_corrections(queue.engine)["poster_id"].tolist() == [first]


def test_serve_review_refuses_a_public_host_and_stray_options(tmp_path, small_catalog):
    runner = CliRunner()
    public = runner.invoke(app, ["serve", "--review", str(small_catalog), "--host", "0.0.0.0"])
    assert public.exit_code == 2 and "--host 127.0.0.1" in public.output
    stray = runner.invoke(app, ["serve", "--review-db", str(tmp_path / "r.sqlite")])
    assert stray.exit_code == 2 and "go with --review CATALOG" in stray.output


# --- the page in Chromium ------------------------------------------------------------------------

@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Chromium and chromedriver "
                    "(apt-get install chromium chromium-driver)")
def test_two_posters_corrected_through_the_page(predictor, small_catalog, db, tmp_path):
    """End to end in Chromium, into a SQLite file and into PostgreSQL."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    queue = review.ReviewQueue.build(predictor, small_catalog, None, db, "tester")
    queue.items.loc[2, "in_domain"] = False  # as the model says of a poster unlike its training posters
    web = serve.create_app(predictor)
    review.mount(web, queue)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        with serve.background(web) as url:
            browser.get(f"{url}/review")
            wait = WebDriverWait(browser, 60)
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "li.item")) == 8)
            cards = browser.find_elements(By.CSS_SELECTOR, "li.item")
            assert [c.get_attribute("data-id") for c in cards] == queue.items["id"].tolist()
            assert cards[2].find_elements(By.CSS_SELECTOR, ".warning")
            assert not cards[0].find_elements(By.CSS_SELECTOR, ".warning")
            wait.until(lambda b: all(img.get_property("naturalWidth") > 0
                                     for img in b.find_elements(By.CSS_SELECTOR, "li.item img")[:2]))

            # the first poster: one genre the model did not predict, ticked
            unticked = [box for box in cards[0].find_elements(By.CSS_SELECTOR, "fieldset input")
                        if not box.is_selected()]
            added = unticked[0].get_attribute("value")
            unticked[0].click()
            cards[0].find_element(By.CSS_SELECTOR, "button.save").click()
            # the second poster: its score changed, its genres left as the model has them
            score = cards[1].find_element(By.CSS_SELECTOR, "input.score-input")
            score.clear()
            score.send_keys("3.3")
            cards[1].find_element(By.CSS_SELECTOR, "button.save").click()
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "li.item.reviewed")) == 2)
            assert "corrected by tester" in cards[0].find_element(By.CSS_SELECTOR, ".actions").text
            browser.save_screenshot(str(tmp_path / "review.png"))
    finally:
        browser.quit()

    rows = corrections.list_corrections(queue.engine).set_index("poster_id")
    first, second = (queue.items.iloc[i] for i in (0, 1))
    assert sorted(rows.index) == sorted([first["id"], second["id"]])
    assert rows.loc[first["id"], "genres"] == [g for g in queue.genres if g in [*first["genres"], added]]
    assert rows.loc[first["id"], "score"] == pytest.approx(round(first["score"], 1))
    assert rows.loc[second["id"], "genres"] == list(second["genres"])
    assert rows.loc[second["id"], "score"] == pytest.approx(3.3)
    for poster_id, item in ((first["id"], first), (second["id"], second)):
        row = rows.loc[poster_id]
        assert not row["accepted"] and row["reviewer"] == "tester" and row["file"] == Path(item["path"]).name
        assert row["model_genres"] == list(item["genres"])
        assert row["model_score"] == pytest.approx(item["score"], abs=1e-4)
        assert row["model_confidence"] == pytest.approx(item["confidence"], abs=1e-4)


# --- a retrain on the corrections ------------------------------------------------------------------

def test_train_with_corrections_trains_on_the_reviewed_labels(sample_dir, shared_cache, tmp_path):
    from posterlens.models import directory

    table = catalogs.read_catalog(sample_dir / "MovieGenre.csv")
    horror = next(i for i, g in enumerate(table["genres"]) if "Horror" not in g and "Drama" in g)
    rescored = next(i for i in range(len(table)) if i != horror and not np.isnan(table["score"][i]))
    db = tmp_path / "reviews.sqlite"
    engine = corrections.open_db(db)
    corrections.record(engine, Correction(table["id"][horror], ["Horror"], None, False, "ann"), ["Horror"])
    corrections.record(engine, Correction(table["id"][rescored], list(table["genres"][rescored]), 1.0, False, "ann"),
                       list(table["genres"][rescored]))
    corrections.record(engine, Correction("tt-not-in-the-catalogue", ["Horror"], None, False, "ann"), ["Horror"])
    engine.dispose()

    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["train", "-c", str(sample_dir / "MovieGenre.csv"), "-o", str(out),
                                      "--corrections", str(db), "--holdout", "0", "--epochs", "2",
                                      "--min-genre-count", "10", "--no-thumbnails", "--cache", str(shared_cache)])
    assert result.exit_code == 0, result.output
    assert "corrections: 2 posters relabelled by their reviews" in result.output
    info = directory.load(out).info
    assert info["n_corrections"] == 2 and info["n_train"] == len(table)
    counts = {g: int(c) for g, c in zip(info["train_genre_counts"],
                                        catalogs.genre_matrix(table, list(info["train_genre_counts"])).sum(axis=0))}
    assert info["train_genre_counts"]["Horror"] == counts["Horror"] + 1
    assert info["train_genre_counts"]["Drama"] == counts["Drama"] - 1
    scores = table["score"].to_numpy(dtype=float).copy()
    scores[rescored] = 1.0
    assert info["train_score_mean"] == pytest.approx(np.nanmean(scores))

    missing = CliRunner().invoke(app, ["train", "-c", str(sample_dir / "MovieGenre.csv"), "-o", str(tmp_path / "m2"),
                                       "--corrections", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 2 and "--corrections" in missing.output and "no such file" in missing.output
