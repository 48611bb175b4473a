"""Reviewers' corrections of the model's answers, kept in a real database (SQLAlchemy Core).

A database is a SQLite file (a path: the default) or PostgreSQL (a ``postgresql://`` URL,
driver ``psycopg2``: ``pip install 'posterlens[review]'``). One table, ``corrections``: a row a
review (who, when, what the model answered, what the reviewer kept), never updated; the
latest review of a poster is the one that counts. ``serve --review`` writes it,
``train --corrections`` reads it (``apply_corrections``: a poster's reviewed genres and score
override the catalogue's).

Everything in it is treated as hostile: genres are checked against the model's, scores are
from 0 to 10, values only ever reach SQL as bound parameters, and a URL's password is never
shown (``shown``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from posterlens.data.catalog import normalise_genre
from posterlens.errors import CorrectionsError

__all__ = ["CorrectionsError", "Correction", "TABLE", "SCORE_RANGE", "database_url", "shown", "open_db",
           "check_name", "check", "record", "list_corrections", "apply_corrections"]

log = logging.getLogger(__name__)

SCORE_RANGE = (0.0, 10.0)
MAX_TEXT = 200  # longest poster id, reviewer, model name
POSTGRES_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg2"}
CONNECT_TIMEOUT = 10  # seconds, PostgreSQL

_metadata = sa.MetaData()
TABLE = sa.Table(
    "corrections", _metadata,
    sa.Column("row", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("poster_id", sa.String(MAX_TEXT), nullable=False, index=True),
    sa.Column("file", sa.Text, nullable=False, default=""),  # the poster's file name
    sa.Column("key", sa.String(64), nullable=False, default=""),  # the poster's content hash
    sa.Column("genres", sa.JSON, nullable=False),  # what the reviewer kept (the model's, when accepted)
    sa.Column("score", sa.Float, nullable=True),  # None: no score (the catalogue's stays)
    sa.Column("accepted", sa.Boolean, nullable=False),  # the model's answer kept as it was
    sa.Column("reviewer", sa.String(MAX_TEXT), nullable=False),
    sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),  # UTC
    sa.Column("model_genres", sa.JSON, nullable=False),
    sa.Column("model_score", sa.Float, nullable=True),
    sa.Column("model_confidence", sa.Float, nullable=True),
    sa.Column("model_domain_score", sa.Float, nullable=True),
    sa.Column("model", sa.String(MAX_TEXT), nullable=False, default=""),  # model folder and config digest
)


@dataclass(frozen=True)
class Correction:
    """One review of one poster: the reviewer's answer and the model's."""

    poster_id: str
    genres: list[str]
    score: float | None
    accepted: bool
    reviewer: str
    file: str = ""
    key: str = ""
    model_genres: list[str] = field(default_factory=list)
    model_score: float | None = None
    model_confidence: float | None = None
    model_domain_score: float | None = None
    model: str = ""
    reviewed_at: datetime | None = None  # set by ``record``


def database_url(value: str | Path | URL, option: str = "--review-db") -> URL:
    """A SQLite file path or a ``sqlite:///`` / ``postgresql://`` URL as a SQLAlchemy URL."""
    if isinstance(value, URL):
        return value
    text = str(value)
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser().resolve()))
    scheme = text.split("://", 1)[0].lower()
    if scheme != "sqlite" and scheme not in POSTGRES_SCHEMES:
        raise CorrectionsError(f"{option}: {scheme}:// is not supported: give a SQLite file path or a "
                               "postgresql://user:password@host:port/database URL")
    try:
        url = make_url(text)
    except (sa.exc.ArgumentError, ValueError):
        raise CorrectionsError(f"{option}: not a valid {scheme}:// URL: expected "
                               "postgresql://user:password@host:port/database") from None
    return url.set(drivername="postgresql+psycopg2") if scheme in POSTGRES_SCHEMES else url


def shown(url: URL) -> str:
    """The URL as it may be printed: a SQLite file's path, or the URL with its password hidden."""
    return (url.database or "") if url.drivername == "sqlite" else url.render_as_string(hide_password=True)


def open_db(value: str | Path | URL, option: str = "--review-db", create: bool = True) -> Engine:
    """An engine on the database, its table created when ``create``; without ``create`` (reading,
    ``train --corrections``) a SQLite file must exist and hold the table."""
    url = database_url(value, option)
    if url.drivername == "sqlite":
        path = Path(url.database or "")
        if not create and not path.is_file():
            raise CorrectionsError(f"{option} {path}: no such file (the database `posterlens serve --review` writes)")
        if path.exists() and not path.is_file():
            raise CorrectionsError(f"{option} {path}: not a regular file: give a SQLite file path")
    try:
        engine = sa.create_engine(url, **({} if url.drivername == "sqlite" else
                                          {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}}))
    except ModuleNotFoundError as err:
        raise CorrectionsError(f"{option}: the {err.name} driver is missing: pip install 'posterlens[review]'") from None
    try:
        with engine.begin() as conn:
            if create:
                _metadata.create_all(conn)
            found = sa.inspect(conn).has_table(TABLE.name)
    except sa.exc.SQLAlchemyError as err:
        engine.dispose()
        raise CorrectionsError(f"{option} {shown(url)}: cannot open the database ({_reason(err, url)}); "
                               "check the path or URL, the server and the permissions") from None
    if not found:
        engine.dispose()
        raise CorrectionsError(f"{option} {shown(url)}: no '{TABLE.name}' table: not a posterlens review database")
    return engine


def _reason(err: sa.exc.SQLAlchemyError, url: URL) -> str:
    """The driver's first line, without the password should it hold it."""
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    reason = text[0] if text else type(err).__name__
    return reason.replace(url.password, "***") if url.password else reason


def check_name(name: str, value: str) -> str:
    """``value`` stripped, if it is 1 to ``MAX_TEXT`` characters (a poster id, a reviewer's name)."""
    value = str(value).strip()
    if not value or len(value) > MAX_TEXT:
        raise CorrectionsError(f"{name}: must be 1 to {MAX_TEXT} characters")
    return value


def check(correction: Correction, genres: list[str]) -> Correction:
    """``correction`` with its genres in the model's order, or ``CorrectionsError`` naming what is wrong:
    a genre the model does not know, no genre from a genre model, a score outside 0-10."""
    unknown = sorted(set(correction.genres) - set(genres))
    if unknown:
        raise CorrectionsError(f"genres: {', '.join(map(repr, unknown))} not among the model's genres")
    if genres and not correction.genres:
        raise CorrectionsError("genres: choose at least one genre")
    score = correction.score
    if score is not None:
        low, high = SCORE_RANGE
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
                or not low <= score <= high:
            raise CorrectionsError(f"score: {score!r} is not a number from {low:g} to {high:g}")
        score = float(score)
    return replace(correction, poster_id=check_name("poster id", correction.poster_id),
                   reviewer=check_name("reviewer", correction.reviewer),
                   genres=[g for g in genres if g in set(correction.genres)], score=score)


def record(engine: Engine, correction: Correction, genres: list[str]) -> Correction:
    """Check ``correction`` against the model's ``genres`` and store it, stamped now (UTC)."""
    correction = replace(check(correction, genres), reviewed_at=datetime.now(timezone.utc))
    with engine.begin() as conn:
        conn.execute(sa.insert(TABLE).values(**asdict(correction)))
    return correction


def list_corrections(engine: Engine, latest: bool = True) -> pd.DataFrame:
    """Every review, oldest first, or (``latest``) the latest review of each poster; times in UTC."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(TABLE).order_by(TABLE.c.row)).mappings().all()
    table = pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in TABLE.columns])
    table["reviewed_at"] = pd.to_datetime(table["reviewed_at"], utc=True)
    if latest:
        table = table.drop_duplicates("poster_id", keep="last").reset_index(drop=True)
    return table


def apply_corrections(catalog: pd.DataFrame, db: str | Path | Engine,
                      option: str = "--corrections") -> tuple[pd.DataFrame, int]:
    """The catalogue table (``catalog.COLUMNS``) with each reviewed poster's genres, and score where
    the review gave one, taken from its latest review; and how many posters were overridden."""
    engine = db if isinstance(db, Engine) else open_db(db, option, create=False)
    try:
        reviews = list_corrections(engine).set_index("poster_id")
    except sa.exc.SQLAlchemyError as err:
        raise CorrectionsError(f"{option}: cannot read the corrections ({_reason(err, engine.url)})") from None
    finally:
        if not isinstance(db, Engine):
            engine.dispose()
    table, applied = catalog.copy(), 0
    genres, scores = table["genres"].tolist(), table["score"].to_numpy(dtype=float).copy()
    for i, poster_id in enumerate(table["id"].astype(str)):
        if poster_id in reviews.index:
            genres[i], score = _labels(reviews.loc[poster_id], option)
            scores[i] = scores[i] if score is None else score
            applied += 1
    if applied < len(reviews):
        log.warning("%s: %d corrected poster(s) are not in this catalogue: left out", option, len(reviews) - applied)
    table["genres"], table["score"] = genres, scores
    return table, applied


def _labels(review: pd.Series, option: str) -> tuple[list[str], float | None]:
    """A stored review's genres (normalised) and score, refused in one line if the database was tampered with."""
    genres, score = review["genres"], review["score"]
    score = None if isinstance(score, float) and math.isnan(score) else score
    low, high = SCORE_RANGE
    if not (isinstance(genres, list) and all(isinstance(g, str) and normalise_genre(g) for g in genres)) \
            or not (score is None or (isinstance(score, (int, float)) and low <= score <= high)):
        raise CorrectionsError(f"{option}: the review of {review.name!r} (row {review['row']}) is damaged: "
                               f"genres must be a list of names, the score from {low:g} to {high:g}")
    return [normalise_genre(g) for g in genres], None if score is None else float(score)
