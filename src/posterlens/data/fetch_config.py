"""``FetchConfig``: the downloader's settings, their defaults and their rules.

Kept apart from ``fetch`` (httpx, pandas, Pillow) so that the CLI quotes these defaults in its
help without importing the downloader.
"""

from __future__ import annotations

from dataclasses import dataclass

from posterlens.settings import Choice, Range, check

__all__ = ["FetchConfig"]


@dataclass
class FetchConfig:
    """Knobs for ``fetch_posters``."""

    concurrency: int = 16
    retries: int = 3  # extra attempts per URL after the first
    timeout: float = 20.0  # seconds per request (connect + headers + body)
    max_bytes: int = 10_000_000
    max_pixels: int = 40_000_000  # decompression-bomb limit
    backoff: float = 0.5  # base seconds for exponential backoff with jitter
    max_retry_after: float = 60.0  # cap for Retry-After waits (and for backoff)
    manifest_every: int = 50  # rewrite the manifest after this many results
    allow_private_hosts: bool = False  # also fetch from loopback/private/link-local hosts

    RULES = {  # ClassVar: not a field
        "concurrency": Range(1, 1024, integer=True), "retries": Range(0, 100, integer=True),
        "timeout": Range(0.001, 3600), "max_bytes": Range(1, 1 << 30, integer=True),
        "max_pixels": Range(1, 1 << 31, integer=True), "backoff": Range(0, 3600), "max_retry_after": Range(0, 3600),
        "manifest_every": Range(1, 1_000_000, integer=True), "allow_private_hosts": Choice((False, True)),
    }

    def __post_init__(self) -> None:
        check(self.RULES, vars(self), "FetchConfig")
