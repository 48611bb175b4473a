"""The web app: a page to drop a poster on, and its JSON API (FastAPI, served by uvicorn).

``create_app(predictor)`` builds the app around a ``Predictor`` created once; ``run(model_dir)``
loads one and serves it on 127.0.0.1. Endpoints:

- ``GET /``: the page (``static/index.html``, ``app.js``, ``app.css``: nothing from elsewhere);
- ``POST /api/predict`` (multipart ``image``, or ``url`` when URL fetching is on): genres,
  probabilities, score and similar movies, and how far to trust them (``trust_fields``);
- ``POST /api/explain`` (same input, optional ``genres``): a heat map per genre (``workflows.explain``);
- ``GET /api/health``; ``GET /api/poster/{id}``: a training poster's thumbnail, which the model
  carries (``train --thumbnails``, the default), else ``<id>.jpg`` in the folder named by
  ``serve --posters`` (never a path the model names); OpenAPI at ``/docs``;
- with ``serve --review CATALOG``: the review queue and its API (``app.review``).

Uploads are capped while they are read (``max_upload_bytes``), must be an image Pillow
identifies in ``ALLOWED_FORMATS`` and at most ``max_pixels`` pixels (read from the header,
before decoding): each failure is a 4xx ``{"error": code, "detail": message}``. The model runs
one request at a time (a lock; the embedding runners are not thread-safe), the page and the
API stay responsive meanwhile.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time.

import base64
import contextlib
import io
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from posterlens.data.images import PosterError, content_hash
from posterlens.models.trust_settings import INTERVAL
from posterlens.paths import STATIC_DIR

__all__ = ["ApiError", "Limits", "capped", "read_form", "check_image", "download", "poster_from", "similar_movies",
           "pd_isna", "predict_one", "data_url", "explain_one", "create_app", "warm_up", "background", "run"]

STATIC = STATIC_DIR
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MAX_UPLOAD_BYTES = 10_000_000
MAX_PIXELS = 25_000_000
FORM_OVERHEAD = 16_384  # multipart boundaries and headers allowed on top of the image
SIMILAR = 10  # similar movies returned by /api/predict
_IMAGE_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object",
    "properties": {"image": {"type": "string", "format": "binary"},
                   "url": {"type": "string", "description": "instead of image, when URL fetching is on"},
                   "genres": {"type": "string", "description": "/api/explain: comma-separated genres"}}}}}}}


class ApiError(Exception):
    """A request the API refuses: HTTP status, a short code and a message for people."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class Limits:
    """What an upload may be."""

    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = MAX_PIXELS
    allow_url_fetch: bool = False


# --- reading an upload --------------------------------------------------------------------------

async def capped(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """``stream``, raising ``ApiError(413)`` as soon as more than ``limit`` bytes have come."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "too_large", f"upload over the {limit - FORM_OVERHEAD:,} byte limit")
        yield chunk


async def read_form(request, limits: Limits) -> dict[str, str | bytes]:
    """The multipart form, read with the size cap applied as it streams in."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    limit = limits.max_upload_bytes + FORM_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"upload of {int(declared):,} bytes: over the "
                                         f"{limits.max_upload_bytes:,} byte limit")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "not_multipart", "send the poster as multipart/form-data (field 'image')")
    parser = MultiPartParser(request.headers, capped(request.stream(), limit), max_files=1, max_fields=4,
                             max_part_size=limits.max_upload_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise ApiError(400, "bad_form", f"cannot read the form: {err.message}") from None
    fields: dict[str, str | bytes] = {}
    for name, value in form.multi_items():
        fields[name] = value if isinstance(value, str) else await value.read()
    await form.close()
    return fields


def check_image(data: bytes, limits: Limits) -> None:
    """Refuse what is not an allowed image, or has more than ``max_pixels`` pixels (header only)."""
    if len(data) > limits.max_upload_bytes:
        raise ApiError(413, "too_large", f"image of {len(data):,} bytes: over the {limits.max_upload_bytes:,} byte limit")
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError as err:
        raise ApiError(413, "too_many_pixels", f"decompression bomb refused ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ApiError(415, "not_an_image", "not an image: send a JPEG, PNG, WebP, GIF, BMP or TIFF poster") from None
    if kind not in ALLOWED_FORMATS:
        raise ApiError(415, "unsupported_image", f"{kind} images are not accepted: use {', '.join(ALLOWED_FORMATS)}")
    if width * height > limits.max_pixels:
        raise ApiError(413, "too_many_pixels", f"{width}x{height} = {width * height:,} pixels: over the "
                                               f"{limits.max_pixels:,} pixel limit (decompression bomb?)")


async def download(url: str, limits: Limits) -> bytes:
    """One image URL through ``fetch``'s guarded client: public hosts only, size capped, image type checked."""
    from posterlens.data import fetch, http

    if not fetch.is_http_url(url):
        raise ApiError(400, "bad_url", "the URL must start with http:// or https://")
    config = fetch.FetchConfig(retries=0, timeout=15.0, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_pixels)
    attempt = await http.download(url, config)
    if attempt.status != "downloaded":
        status = 413 if attempt.status == "too_large" else 400
        raise ApiError(status, f"fetch_{attempt.status}", f"could not fetch the image: {attempt.status.replace('_', ' ')}")
    return attempt.body


async def poster_from(request, limits: Limits) -> tuple[bytes, dict]:
    """The checked image bytes of a request (upload, or URL when allowed) and the other form fields."""
    form = await read_form(request, limits)
    data = form.pop("image", None)
    url = form.pop("url", None)
    if data is None and url and limits.allow_url_fetch:
        data = await download(str(url), limits)
    elif data is None:
        hint = " or 'url'" if limits.allow_url_fetch else ""
        raise ApiError(400, "no_image", f"no file in the form field 'image'{hint}")
    if isinstance(data, str):
        raise ApiError(400, "no_image", "the field 'image' must be a file")
    check_image(data, limits)
    return data, form


# --- the model ----------------------------------------------------------------------------------

def similar_movies(predictor, vector: np.ndarray, key: str, k: int) -> list[dict]:
    """The ``k`` training movies closest to one poster's ``vector`` in the model's similar-movies
    space (``PosterModel.space``: its genre probabilities), with ``has_poster``."""
    if predictor.index is None or k <= 0:
        return []
    found = predictor.index.query(vector[None].astype(np.float32), k, exclude=[key])[0]

    def has_poster(movie_id: str) -> bool:
        return bool(predictor.index.thumbnail(movie_id)) or bool(predictor.poster_files.get(movie_id))

    return [{"id": str(row.id), "title": row.title, "genres": [g for g in str(row.genres).split("|") if g],
             "score": None if pd_isna(row.score) else round(float(row.score), 1),
             "similarity": round(float(row.similarity), 4), "has_poster": has_poster(str(row.id))}
            for row in found.itertuples(index=False)]


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def predict_one(predictor, data: bytes, k: int = SIMILAR) -> dict:
    """Genres, probabilities, score and similar movies of one checked image."""
    table = predictor.predict(data, warn=False)
    if table.empty:
        reason = table.attrs["errors"]["reason"].iloc[0] if len(table.attrs["errors"]) else "cannot be read"
        raise ApiError(422, "unreadable_image", f"the image cannot be decoded: {reason}")
    row, genres = table.iloc[0], table.attrs["genres"]
    P = row[genres].to_numpy(dtype=np.float32)
    score = float(row["score"])
    return {"genres": list(row["genres"]), "probabilities": {g: round(float(p), 4) for g, p in zip(genres, P)},
            "thresholds": {g: round(float(t), 4) for g, t in zip(genres, predictor.model.thresholds)},
            "score": None if np.isnan(score) else round(score, 2), "kind": predictor.model.kind,
            **trust_fields(row),
            "similar": similar_movies(predictor, table.attrs["space"][0], content_hash(data), k)}


def trust_fields(row) -> dict:
    """``score_low``, ``score_high`` (at level ``interval``), ``genre_confidence``, ``domain_score`` and
    ``in_domain`` of a prediction row (``predict.TRUST_COLUMNS``), null where the model has no such part."""
    def number(value, digits: int) -> float | None:
        return None if pd_isna(value) else round(float(value), digits)

    return {"score_low": number(row["score_low"], 2), "score_high": number(row["score_high"], 2), "interval": INTERVAL,
            "genre_confidence": number(row["genre_confidence"], 4), "domain_score": number(row["domain_score"], 4),
            "in_domain": None if pd_isna(row["in_domain"]) else bool(row["in_domain"])}


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def explain_one(predictor, data: bytes, genres: list[str] | None, limits: Limits, maps: bool) -> dict:
    """Heat maps of one checked image: overlays as PNG data URLs, raw maps on request."""
    from posterlens.workflows.explain import explainer_for

    if predictor.model.genre_model is None:
        raise ApiError(422, "no_genre_model", "this is a score-only model: it has no genres to explain")
    try:
        result = explainer_for(predictor).explain(data, genres or None, limits.max_pixels)
    except ValueError as err:  # unknown genre, or a PosterError
        code = "unreadable_image" if isinstance(err, PosterError) else "bad_genre"
        raise ApiError(422, code, str(err)) from None
    body = {"genres": result.genres, "predicted": result.predicted,
            "probabilities": {g: round(p, 4) for g, p in result.probabilities.items()},
            "overlays": {g: data_url(png) for g, png in result.overlays.items()}, "poster": data_url(result.poster)}
    if maps:
        body["maps"] = {g: np.round(m, 3).tolist() for g, m in result.maps.items()}
    return body


# --- the app ------------------------------------------------------------------------------------

def create_app(predictor, allow_url_fetch: bool = False, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_pixels: int = MAX_PIXELS, similar: int = SIMILAR):
    """The FastAPI app around one loaded ``Predictor`` (never reloaded; one model call at a time)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    limits = Limits(max_upload_bytes, max_pixels, allow_url_fetch)
    model_lock, explain_lock = threading.Lock(), threading.Lock()
    app = FastAPI(title="posterlens", summary="Genres, score and similar movies from a movie poster")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"error": err.code, "detail": err.detail}, status_code=err.status)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, err: ClientDisconnect) -> Response:
        """The client hung up mid-upload (after a 413, say): nothing to answer, nothing to log as an error."""
        return Response(status_code=499)

    @app.middleware("http")
    async def same_origin_only(request: Request, call_next):
        response = await call_next(request)
        if not request.url.path.startswith(("/docs", "/redoc")):  # FastAPI's docs load Swagger UI themselves
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'")
        return response

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/health")
    def health() -> dict:
        """The model being served and the upload limits."""
        return {"status": "ok", "model": predictor.model_dir.name, "backbones": predictor.model.features.name,
                "genres": list(predictor.model.genres), "similar_index": predictor.index is not None,
                **asdict(limits)}

    def locked(lock: threading.Lock, fn, *args):
        with lock:
            return fn(*args)

    @app.post("/api/predict", openapi_extra=_IMAGE_FORM)
    async def predict(request: Request) -> dict:
        """Genres (the model's label rule), probability per genre, score and similar movies of one poster."""
        data, _ = await poster_from(request, limits)
        return await run_in_threadpool(locked, model_lock, predict_one, predictor, data, similar)

    @app.post("/api/explain", openapi_extra=_IMAGE_FORM)
    async def explain(request: Request, maps: bool = False) -> dict:
        """A heat map per genre (the predicted ones, or the form's ``genres``) over the poster."""
        data, form = await poster_from(request, limits)
        genres = [g.strip() for g in str(form.get("genres", "")).split(",") if g.strip()]
        return await run_in_threadpool(locked, explain_lock, explain_one, predictor, data, genres, limits, maps)

    @app.get("/api/poster/{movie_id}")
    def poster(movie_id: str) -> Response:
        """A training movie's poster: its thumbnail in the model, else its file in the ``--posters`` folder."""
        thumb = predictor.index.thumbnail(movie_id) if predictor.index is not None else b""
        if thumb:
            return Response(thumb, media_type="image/webp", headers={"Cache-Control": "max-age=86400"})
        path = predictor.poster_files.get(movie_id)
        if not path or not Path(path).is_file():
            raise ApiError(404, "no_poster", f"no poster file for {movie_id!r}")
        return FileResponse(path)

    return app


def warm_up(predictor) -> None:
    """Run one blank poster through the model so that the first request does not build the runners."""
    predictor.predict(np.zeros((64, 48, 3), dtype=np.uint8), warn=False)


@contextlib.contextmanager
def background(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread (``port`` 0: a free one); yields the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {host}:{port}")
            time.sleep(0.02)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(10)


def run(model_dir: str | Path | None, host: str = "127.0.0.1", port: int = 8000, cache: str | Path | None = None,
        allow_url_fetch: bool = False, max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
        log_level: str = "info", posters: str | Path | None = None, review: Path | None = None,
        images: Path | None = None, review_db: str | None = None, reviewer: str | None = None) -> None:
    """Load the model once (``model_dir`` None: the released one) and serve the app with uvicorn;
    ``posters``: a folder of training posters (``<id>.jpg``) for models without thumbnails;
    ``review``: a catalogue (its posters in ``images``) to review at ``/review`` (``app.review``)."""
    import uvicorn

    import posterlens
    from posterlens.errors import SettingsError

    if review is None and (images or review_db or reviewer):
        raise SettingsError("--images, --review-db and --reviewer go with --review CATALOG")
    if review is not None and host not in ("127.0.0.1", "localhost", "::1"):
        raise SettingsError(f"--review: the review page writes to a database: serve it on --host 127.0.0.1, not {host}")
    predictor = posterlens.load(model_dir, cache, posters=posters)
    warm_up(predictor)
    app = create_app(predictor, allow_url_fetch, max_upload_bytes, max_pixels)
    if review is not None:
        from posterlens.app import review as reviewing

        reviewing.mount(app, reviewing.ReviewQueue.build(predictor, review, images, review_db, reviewer))
    uvicorn.run(app, host=host, port=port, log_level=log_level)
