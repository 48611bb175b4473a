"""Download posters from a catalogue's URLs: concurrent, validated and resumable.

``fetch_posters(catalog, out_dir)`` saves each movie's poster as ``out_dir/{id}.jpg``:

* downloads run concurrently: ``config.concurrency`` asyncio workers, each with its own
  one-connection ``httpx.AsyncClient`` (so at most that many connections), browser-like
  headers and at most ``MAX_REDIRECTS`` redirects;
* timeouts, connection errors, HTTP 429 and 5xx are retried with exponential backoff and
  jitter (``Retry-After`` is honoured, capped); other 4xx are not retried;
* Amazon/IMDb poster URLs fall back to other size variants (``url_variants``) when the
  original gives 403/404/410 or is not an image;
* a body only counts once it has an ``image/*`` content type, fits in ``max_bytes``
  (streamed, abandoned as soon as it is larger), passes Pillow's ``verify()`` and a full
  ``load()``, and declares at most ``max_pixels`` pixels (bodies are held in memory while
  they are checked: at most ``concurrency * max_bytes``). Only then is it written to
  ``.{id}.jpg.part`` and renamed to ``{id}.jpg``, so a killed run never leaves a partial
  file under a final name (stale ``.part`` files are removed by the next run);
* only public internet hosts are contacted: every connection (the first request and each
  redirect hop) resolves the host, refuses it if any address is loopback, private,
  link-local, multicast, reserved or otherwise not global, and connects to the address it
  checked (no second DNS answer, so no DNS rebinding). ``config.allow_private_hosts``
  opens loopback and private addresses (e.g. a poster mirror on the local network), never
  link-local ones (the cloud metadata service); environment proxies are never used, since a
  proxy would resolve hosts itself;
* a re-run keeps files that exist and validate (status ``cached``) and retries the rest;
* ``out_dir/manifest.csv`` (``MANIFEST_COLUMNS``) gets one row per movie; it is written
  atomically (``safeio.write_csv``: spreadsheet formulas neutralised) every
  ``config.manifest_every`` results and at the end;
* a poster or manifest that cannot be written (disk full, read-only folder) stops the run
  with a one-line ``safeio.OutputError``; no partial file is left behind.

Statuses: ``ok``, ``cached``, ``no_url``, ``invalid_url``, ``invalid_id``, ``not_a_file`` (a folder,
FIFO or device sits where the poster would go: left alone), ``http_<code>``
(e.g. ``http_404``, ``http_500``), ``timeout``, ``connection_error``, ``truncated`` (body
cut short or image data incomplete), ``not_image``, ``too_large`` (more than ``max_bytes``),
``bomb`` (more than ``max_pixels``), ``unsupported_encoding`` (a ``Content-Encoding`` other than
the gzip or deflate asked for), ``too_many_redirects``, ``blocked_host`` (the host or a
redirect is not on the public internet) and ``http_error`` (any other HTTP-level failure).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import os
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
from PIL import Image

from posterlens.data import http
from posterlens.data.fetch_config import FetchConfig
from posterlens.errors import OutputError
from posterlens.progress import progress as progress_bar
from posterlens.safeio import remove_stale_temps, write_csv

__all__ = ["FetchConfig", "FetchResult", "FetchSummary", "MANIFEST_NAME", "MANIFEST_COLUMNS", "OK_STATUSES",
           "select", "url_variants", "is_http_url", "validate_image", "write_manifest", "fetch_posters"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("imdbId", "status", "bytes", "attempts", "final_url")
OK_STATUSES = frozenset({"ok", "cached"})
# Outcomes after which another size variant of the same poster is worth a try.
FALLBACK_STATUSES = frozenset({"http_403", "http_404", "http_410", "not_image"})
# Size specs tried after the original one, in order ("" is the full-size original).
FALLBACK_SIZE_SPECS = ("", "SX300")

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_V1_RE = re.compile(r"^(?P<head>.+\._V1_)(?P<spec>[^/]*)(?P<ext>\.jpg)$", re.IGNORECASE)
_SAMPLE_HELP = "expected 'per-genre:K' or 'random:N' with a positive integer"


@dataclass(frozen=True)
class FetchResult:
    """What happened to one movie's poster (one manifest row)."""

    id: str
    status: str
    bytes: int = 0
    attempts: int = 0
    final_url: str = ""

    def row(self) -> tuple[str, str, int, int, str]:
        return (self.id, self.status, self.bytes, self.attempts, self.final_url)


@dataclass
class FetchSummary:
    """Outcome of ``fetch_posters``: counts per status and where the manifest is."""

    counts: dict[str, int]
    manifest: Path
    out_dir: Path
    elapsed: float  # seconds

    @property
    def n_ok(self) -> int:
        """Posters present and valid (downloaded now or cached)."""
        return sum(self.counts.get(s, 0) for s in OK_STATUSES)

    @property
    def n_failed(self) -> int:
        return sum(self.counts.values()) - self.n_ok


# --------------------------------------------------------------------------- selection


def select(
    catalog: pd.DataFrame, limit: int | None = None, sample: str | None = None, seed: int = 42
) -> pd.DataFrame:
    """Rows of ``catalog`` to fetch, in catalogue order.

    ``sample`` is ``"per-genre:K"`` (every genre gets up to K posters; a movie picked for a
    rare genre also counts for its other genres, which keeps common genres near K) or
    ``"random:N"`` (N random rows). ``limit`` then keeps the first N rows.
    """
    out = catalog if sample is None else _sample(catalog, sample, seed)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        out = out.head(limit)
    return out


def _sample(catalog: pd.DataFrame, spec: str, seed: int) -> pd.DataFrame:
    kind, n = _parse_sample_spec(spec)
    if kind == "random":
        rng = np.random.default_rng(seed)
        positions = rng.choice(len(catalog), size=min(n, len(catalog)), replace=False)
        return catalog.iloc[np.sort(positions)]
    return catalog.iloc[_per_genre_positions(catalog["genres"], n, seed)]


def _parse_sample_spec(spec: str) -> tuple[str, int]:
    kind, sep, number = str(spec).strip().partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("per-genre", "random"):
        raise ValueError(f"bad sample spec {spec!r}: {_SAMPLE_HELP}")
    try:
        n = int(number)
    except ValueError:
        raise ValueError(f"bad sample spec {spec!r}: {_SAMPLE_HELP}") from None
    if n < 1:
        raise ValueError(f"bad sample spec {spec!r}: {_SAMPLE_HELP}")
    return kind, n


def _per_genre_positions(genres_column: Iterable[Any], k: int, seed: int) -> list[int]:
    """Greedy pick, rarest genre first, preferring rows that push no other genre past k."""
    genres = [set(g) if isinstance(g, (list, tuple, set, np.ndarray)) else set()
              for g in genres_column]
    by_genre: dict[str, list[int]] = defaultdict(list)
    for pos, row_genres in enumerate(genres):
        for genre in row_genres:
            by_genre[genre].append(pos)
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    chosen: set[int] = set()
    for genre in sorted(by_genre, key=lambda g: (len(by_genre[g]), g)):
        need = k - counts[genre]
        if need <= 0:
            continue
        candidates = [p for p in by_genre[genre] if p not in chosen]
        rng.shuffle(candidates)
        candidates.sort(key=lambda p: sum(counts[g] >= k for g in genres[p]))  # stable
        for pos in candidates[:need]:
            chosen.add(pos)
            counts.update(genres[pos])
    return sorted(chosen)


# --------------------------------------------------------------------------- URLs


def url_variants(url: str) -> list[str]:
    """The URL followed by its Amazon/IMDb size variants (``._V1_<spec>.jpg``), no duplicates.

    >>> url_variants("https://m.media-amazon.com/images/M/MV5Bx@._V1_UX182_CR0,0,182,268_AL_.jpg")
    ['https://m.media-amazon.com/images/M/MV5Bx@._V1_UX182_CR0,0,182,268_AL_.jpg', \
'https://m.media-amazon.com/images/M/MV5Bx@._V1_.jpg', \
'https://m.media-amazon.com/images/M/MV5Bx@._V1_SX300.jpg']
    """
    match = _V1_RE.match(url)
    if match is None:
        return [url]
    variants = [url] + [f"{match['head']}{spec}{match['ext']}" for spec in FALLBACK_SIZE_SPECS]
    return list(dict.fromkeys(variants))


def is_http_url(url: str) -> bool:
    """True for an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def _clean_url(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


# --------------------------------------------------------------------------- validation


def validate_image(source: Path | bytes, max_pixels: int) -> str:
    """Check an image file or its bytes: ``ok``, ``bomb``, ``truncated`` or ``not_image``.

    ``"ok"`` needs Pillow's ``verify()`` and a full decode to pass, and at most
    ``max_pixels`` pixels (checked from the header, before anything is decoded).
    """

    def open_image() -> Image.Image:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)

    try:
        with open_image() as im:
            width, height = im.size
            if width * height > max_pixels:
                return "bomb"
            im.verify()
        with open_image() as im:  # verify() leaves the image unusable: reopen to decode
            im.load()
    except Image.DecompressionBombError:
        return "bomb"
    except Exception as err:  # Pillow raises many kinds (OSError, SyntaxError, struct.error...)
        log.debug("invalid image: %s", err)
        return "truncated" if "truncated" in str(err).lower() else "not_image"
    return "ok"


def _save_if_valid(body: bytes, part: Path, dest: Path, max_pixels: int) -> str:
    """Validate ``body``; if it is good, write it to ``part`` then rename that to ``dest``.

    ``part`` never outlives a failure; a write error becomes an ``OutputError``.
    """
    status = validate_image(body, max_pixels)
    if status == "ok":
        try:
            part.write_bytes(body)
            os.replace(part, dest)
        except BaseException as err:
            part.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise OutputError(dest, err) from None
            raise
    return status



# --------------------------------------------------------------------------- one poster


def _occupied(path: Path) -> bool:
    """Whether something that is not a regular file (or a link to one) sits at ``path``."""
    import stat

    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return os.path.lexists(path)  # a dangling link
    except OSError:
        return True


def _final_path(out_dir: Path, movie_id: str) -> Path:
    return out_dir / f"{movie_id}.jpg"


def _part_path(out_dir: Path, movie_id: str) -> Path:
    return out_dir / f".{movie_id}.jpg.part"


async def _fetch_one(
    client: httpx.AsyncClient,
    movie_id: str,
    url: str | None,
    out_dir: Path,
    config: FetchConfig,
    rng: random.Random,
) -> FetchResult:
    """Make ``out_dir/{movie_id}.jpg`` valid (cached or downloaded) or report why not."""
    if not _ID_RE.fullmatch(movie_id):  # not a file name fetch would write (nothing to fetch without a URL)
        return FetchResult(movie_id, "no_url" if url is None else "invalid_id", final_url=url or "")
    dest = _final_path(out_dir, movie_id)
    if _occupied(dest):  # a folder, FIFO or device named like the poster: reported, never opened
        log.warning("%s is not a regular file: leaving it alone", dest)
        return FetchResult(movie_id, "not_a_file", final_url=url or "")
    if dest.exists():
        if await asyncio.to_thread(validate_image, dest, config.max_pixels) == "ok":
            return FetchResult(movie_id, "cached", dest.stat().st_size, 0, url or "")
        log.info("discarding invalid existing poster %s", dest)
        dest.unlink(missing_ok=True)
    if url is None:
        return FetchResult(movie_id, "no_url")
    if not is_http_url(url):
        return FetchResult(movie_id, "invalid_url", final_url=url)

    part = _part_path(out_dir, movie_id)
    first_failure: http.Attempt | None = None
    total_attempts = 0
    try:
        for candidate in url_variants(url):
            outcome, attempts = await http.get_with_retries(client, candidate, config, rng)
            total_attempts += attempts
            if outcome.status == "downloaded":
                status = await asyncio.to_thread(
                    _save_if_valid, outcome.body, part, dest, config.max_pixels
                )
                if status == "ok":
                    return FetchResult(movie_id, "ok", outcome.nbytes, total_attempts, outcome.url)
                outcome = replace(outcome, status=status, body=b"")
            first_failure = first_failure or outcome
            if outcome.status not in FALLBACK_STATUSES:
                break
            log.debug("%s: %s for %s", movie_id, outcome.status, candidate)
    finally:
        part.unlink(missing_ok=True)
    assert first_failure is not None
    return FetchResult(
        movie_id, first_failure.status, first_failure.nbytes, total_attempts, first_failure.url
    )


# --------------------------------------------------------------------------- the run


def write_manifest(results: Iterable[FetchResult], path: Path) -> None:
    """Write the manifest CSV atomically, spreadsheet formulas neutralised (``safeio``)."""
    write_csv(pd.DataFrame([r.row() for r in results], columns=list(MANIFEST_COLUMNS)), path)


def _remove_stale_parts(out_dir: Path, ids: Iterable[str], manifest: Path) -> None:
    """Delete partial files left by a killed run, for this run's movies only (shards may share a folder)."""
    stale = [_part_path(out_dir, movie_id) for movie_id in ids if _ID_RE.fullmatch(movie_id)]
    for path in stale:
        if path.exists():
            log.debug("removing stale %s", path)
            path.unlink(missing_ok=True)
    remove_stale_temps(manifest)


def _jobs(catalog: pd.DataFrame) -> list[tuple[str, str | None]]:
    """``(id, url)`` pairs, one per distinct id, in catalogue order."""
    missing = {"id", "url"} - set(catalog.columns)
    if missing:
        raise ValueError(f"catalogue lacks column(s) {sorted(missing)}")
    by_id: dict[str, str | None] = {}
    for movie_id, url in zip(catalog["id"].astype(str), catalog["url"]):
        by_id.setdefault(movie_id, _clean_url(url))
    if len(by_id) < len(catalog):
        duplicates = len(catalog) - len(by_id)
        log.warning("catalogue has %d duplicate id(s); each is fetched once", duplicates)
    return list(by_id.items())


async def _run(
    jobs: list[tuple[str, str | None]],
    out_dir: Path,
    config: FetchConfig,
    results: dict[int, FetchResult],
    progress: bool,
    manifest: Path,
) -> None:
    """Fetch every job with ``config.concurrency`` workers, recording into ``results``.

    Each worker owns a one-connection client, so at most ``concurrency`` connections are
    open. (One shared pool of that size works too, but httpcore checks every pooled
    connection, with a syscall each, per request: about 1.6x the CPU per poster at
    concurrency 16 in benchmarks/fetch_concurrency.py.)
    """
    pending: Iterator[tuple[int, tuple[str, str | None]]] = iter(enumerate(jobs))
    rng = random.Random()
    ssl_context = httpx.create_ssl_context()  # loading CA certificates is slow: do it once

    async def worker(bar) -> None:
        async with http.client(ssl_context, config) as client:
            for position, (movie_id, url) in pending:  # shared iterator: each job taken once
                results[position] = await _fetch_one(client, movie_id, url, out_dir, config, rng)
                bar.update(1)
                if len(results) % config.manifest_every == 0:
                    write_manifest(_ordered(results), manifest)

    with progress_bar(len(jobs), "posters", "poster", progress) as bar:
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(config.concurrency, len(jobs))):
                    group.create_task(worker(bar))
        except* OutputError as group:  # disk full...: one clear error, not an ExceptionGroup
            raise group.exceptions[0] from None


def _ordered(results: dict[int, FetchResult]) -> list[FetchResult]:
    return [results[position] for position in sorted(results)]


def _run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, in a helper thread when an event loop already runs here (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def fetch_posters(
    catalog: pd.DataFrame,
    out_dir: Path,
    config: FetchConfig = FetchConfig(),
    progress: bool = True,
    manifest: Path | None = None,
) -> FetchSummary:
    """Download the posters of ``catalog`` (columns ``id``, ``url``) into ``out_dir``.

    Existing valid posters are kept (``cached``); everything else is (re)tried. Writes
    the manifest (default ``out_dir/manifest.csv``; shards of one catalogue fetched in
    parallel each pass their own) and returns the counts per status.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(catalog)
    manifest = Path(manifest) if manifest else out_dir / MANIFEST_NAME
    manifest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(out_dir, [movie_id for movie_id, _ in jobs], manifest)
    results: dict[int, FetchResult] = {}
    start = time.perf_counter()
    log.info("fetching %d posters into %s (%d at a time)", len(jobs), out_dir, config.concurrency)
    try:
        _run_coroutine(_run(jobs, out_dir, config, results, progress, manifest))
    finally:
        write_manifest(_ordered(results), manifest)  # also after Ctrl-C: what finished so far
    counts = dict(Counter(r.status for r in results.values()).most_common())
    summary = FetchSummary(counts, manifest, out_dir, time.perf_counter() - start)
    log.info("%d/%d posters ready in %.1fs: %s", summary.n_ok, len(jobs), summary.elapsed, counts)
    return summary
