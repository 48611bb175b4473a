"""The review queue: ``posterlens serve --review CATALOG``.

The catalogue's posters are predicted once, at start-up, and queued least confident first
(by ``genre_confidence``: a score-only model's come in catalogue order); posters unlike the training ones
(``in_domain`` false) carry a warning. A person accepts the model's genres and score or
corrects them; each review goes to the corrections database (``data.corrections``), which
``posterlens train --corrections DB`` reads. Routes, added to ``serve.create_app``'s app:

- ``GET /review``: the page (``static/review.html``, ``review.js``, ``review.css``);
- ``GET /api/review/queue?offset=0&limit=100``: the queue (posters reviewed before start-up last);
- ``POST /api/review/{id}``: JSON ``{"accepted": true}`` or ``{"genres": [...], "score": 7.1}``;
- ``GET /review/poster/{id}``: the catalogue's poster file.

A review writes to a database, so ``POST`` takes only ``application/json`` (a cross-site form
cannot send it without a CORS preflight, which this app never answers), from the page's own
origin, addressed to a loopback host name (no DNS rebinding); the server binds 127.0.0.1 only.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time.

import getpass
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from posterlens.app.serve import STATIC, ApiError
from posterlens.data import catalog as catalogs
from posterlens.data import corrections

__all__ = ["DB_NAME", "LOOPBACK", "default_db", "default_reviewer", "ReviewQueue", "mount"]

log = logging.getLogger(__name__)

DB_NAME = "posterlens-review.sqlite"  # the default database, beside the catalogue
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
MAX_BODY = 64 * 1024  # bytes of a review request
PAGE = 100  # posters a queue request returns by default


def default_db(catalog: Path) -> Path:
    """``posterlens-review.sqlite`` in the catalogue's folder (inside a folder of posters)."""
    return (catalog if catalog.is_dir() else catalog.parent) / DB_NAME


def default_reviewer() -> str:
    """The operating system's user name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "reviewer"


def _number(value) -> float | None:
    """A JSON-ready float (None for NaN or a missing value)."""
    return None if value is None or pd.isna(value) else round(float(value), 4)


@dataclass
class ReviewQueue:
    """The catalogue's posters with the model's answers (``items``: those unreviewed at start-up first,
    least confident first) and where reviews go."""

    items: pd.DataFrame
    genres: list[str]
    engine: Engine  # on the corrections database
    reviewer: str
    model: str  # the model folder's name and its config's digest
    db: str  # the database as it may be shown

    @classmethod
    def build(cls, predictor, catalog: Path, images: Path | None, db: str | Path | None,
              reviewer: str | None) -> "ReviewQueue":
        """Read the catalogue, predict its posters (a progress bar) and open (create) the database."""
        table = catalogs.read_catalog(catalog, images)
        url = corrections.database_url(db if db is not None else default_db(Path(catalog)))
        engine = corrections.open_db(url)
        reviewer = corrections.check_name("--reviewer", reviewer or default_reviewer())
        predicted = predictor.predict(table["path"].tolist(), progress=True, warn=False)
        if len(predicted.attrs["errors"]):
            log.warning("%d posters of %s could not be read and are not in the queue", len(predicted.attrs["errors"]),
                        catalog)
        row_of = {file: i for i, file in enumerate(predicted["file"])}
        table = table[table["path"].isin(row_of)].reset_index(drop=True)
        rows = predicted.iloc[[row_of[p] for p in table["path"]]].reset_index(drop=True)
        keys = [predicted.attrs["keys"][row_of[p]] for p in table["path"]]
        genres = list(predicted.attrs["genres"])
        items = pd.DataFrame({
            "id": table["id"].astype(str), "title": table["title"], "path": table["path"], "key": keys,
            "catalogue_genres": table["genres"], "catalogue_score": table["score"],
            "genres": rows["genres"], "score": rows["score"].astype(float) if predicted.attrs["has_score"] else np.nan,
            "score_low": rows["score_low"], "score_high": rows["score_high"],
            "probabilities": [dict(zip(genres, p)) for p in rows[genres].to_numpy(dtype=float)],
            "confidence": rows["genre_confidence"], "domain_score": rows["domain_score"], "in_domain": rows["in_domain"],
        })
        items["reviewed"] = items["id"].isin(corrections.list_corrections(engine)["poster_id"])
        items = items.sort_values(["reviewed", "confidence"], kind="stable", na_position="last").reset_index(drop=True)
        log.info("review queue: %d posters (%d reviewed) at /review; reviews go to %s as %s", len(items),
                 int(items["reviewed"].sum()), corrections.shown(url), reviewer)
        return cls(items.drop(columns="reviewed"), genres, engine, reviewer, _model_name(predictor),
                   corrections.shown(url))

    def queue(self, offset: int = 0, limit: int = PAGE) -> dict:
        """The posters from ``offset`` in the queue's order, each with the model's answer and its latest review."""
        latest = corrections.list_corrections(self.engine).set_index("poster_id")
        page = self.items.iloc[offset:offset + limit]
        return {"model": self.model, "genres": self.genres, "reviewer": self.reviewer, "db": self.db,
                "total": len(self.items), "reviewed": int(self.items["id"].isin(latest.index).sum()), "offset": offset,
                "items": [self._item(row, latest.loc[row.id] if row.id in latest.index else None)
                          for row in page.itertuples(index=False)]}

    def _item(self, row, review: pd.Series | None) -> dict:
        return {"id": row.id, "title": row.title, "file": Path(row.path).name,
                "catalogue": {"genres": list(row.catalogue_genres), "score": _number(row.catalogue_score)},
                "genres": list(row.genres), "score": _number(row.score), "score_low": _number(row.score_low),
                "score_high": _number(row.score_high),
                "probabilities": {g: round(p, 4) for g, p in row.probabilities.items()},
                "confidence": _number(row.confidence), "domain_score": _number(row.domain_score),
                "in_domain": None if pd.isna(row.in_domain) else bool(row.in_domain),
                "review": None if review is None else {
                    "genres": list(review["genres"]), "score": _number(review["score"]),
                    "accepted": bool(review["accepted"]), "reviewer": review["reviewer"],
                    "reviewed_at": review["reviewed_at"].isoformat()}}

    def row(self, poster_id: str):
        found = self.items.index[self.items["id"] == poster_id]
        if not len(found):
            raise ApiError(404, "not_in_queue", f"no poster {poster_id!r} in the review queue")
        return self.items.loc[found[0]]

    def review(self, poster_id: str, body: dict) -> dict:
        """Store one review: ``{"accepted": true}`` keeps the model's answer, else ``genres`` and ``score``."""
        row = self.row(poster_id)
        accepted = body.get("accepted") is True
        genres, score = (list(row["genres"]), _number(row["score"])) if accepted else (body.get("genres"), body.get("score"))
        if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
            raise ApiError(422, "bad_genres", "genres: a list of genre names")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise ApiError(422, "bad_score", "score: a number from 0 to 10, or null")
        correction = corrections.Correction(
            poster_id, genres, score, accepted, self.reviewer, file=Path(row["path"]).name, key=row["key"] or "",
            model_genres=list(row["genres"]), model_score=_number(row["score"]),
            model_confidence=_number(row["confidence"]), model_domain_score=_number(row["domain_score"]),
            model=self.model)
        try:
            stored = corrections.record(self.engine, correction, self.genres)
        except corrections.CorrectionsError as err:
            raise ApiError(422, "bad_review", str(err)) from None
        return {"id": poster_id, "genres": stored.genres, "score": stored.score, "accepted": stored.accepted,
                "reviewer": stored.reviewer, "reviewed_at": stored.reviewed_at.isoformat()}


def _model_name(predictor) -> str:
    """``<model folder>@<first 12 hex digits of its config.json's SHA-256>``."""
    from posterlens.models.directory import CONFIG

    digest = hashlib.sha256((predictor.model_dir / CONFIG).read_bytes()).hexdigest()[:12]
    return f"{predictor.model_dir.name}@{digest}"


def _same_origin(request) -> None:
    """Refuse a write that is not JSON from this page, on a loopback host name."""
    host = request.headers.get("host", "")
    if host.rsplit(":", 1)[0] not in LOOPBACK and host not in LOOPBACK:
        raise ApiError(403, "bad_host", "reviews are taken on 127.0.0.1 or localhost only")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{host}":
        raise ApiError(403, "cross_origin", "reviews are taken from the review page only")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ApiError(415, "not_json", "send the review as application/json")


def mount(app, queue: ReviewQueue) -> None:
    """Add the review page and its API to ``app`` (``serve.create_app``'s)."""
    from fastapi import Request
    from fastapi.responses import FileResponse
    from starlette.concurrency import run_in_threadpool

    @app.get("/review", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "review.html")

    @app.get("/api/review/queue")
    def review_queue(offset: int = 0, limit: int = PAGE) -> dict:
        """The review queue, unreviewed posters first, least confident first."""
        if offset < 0 or not 1 <= limit <= 1000:
            raise ApiError(422, "bad_page", "offset >= 0 and limit from 1 to 1000")
        return queue.queue(offset, limit)

    @app.post("/api/review/{poster_id}")
    async def review(poster_id: str, request: Request) -> dict:
        """Accept the model's answer (``{"accepted": true}``) or correct it (``{"genres": [...], "score": 7.1}``)."""
        _same_origin(request)
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY:
                raise ApiError(413, "too_large", f"a review is at most {MAX_BODY:,} bytes")
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "bad_json", "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_json", "the body must be a JSON object")
        return await run_in_threadpool(queue.review, poster_id, body)

    @app.get("/review/poster/{poster_id}")
    def poster(poster_id: str) -> FileResponse:
        """The catalogue's poster file (a path from the catalogue, never from the request)."""
        path = Path(queue.row(poster_id)["path"])
        if not path.is_file():
            raise ApiError(404, "no_poster", f"no poster file for {poster_id!r}")
        return FileResponse(path)

