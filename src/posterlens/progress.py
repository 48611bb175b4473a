"""Progress for long jobs: a live bar on a terminal, a line now and then elsewhere.

Where stderr is not a terminal (CI, Airflow task logs, ``2> file``) a bar's hundreds of ``\\r``
frames are noise: ``progress`` then logs one line every ``LINE_EVERY`` seconds and one at the end.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["progress", "Lines", "LINE_EVERY"]

log = logging.getLogger("posterlens")

LINE_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


class Lines:
    """A ``tqdm``-like counter that logs ``desc: n/total (p%), r unit/s`` now and then."""

    def __init__(self, total: int, desc: str, unit: str, every: float = LINE_EVERY):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n, self.start = 0, time.monotonic()
        self.last = self.start

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every:
            self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        elapsed = max(self.last - self.start, 1e-9)
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        rate = f"{self.n / elapsed:.1f} {self.unit}/s" if self.n >= elapsed else f"{elapsed / self.n:.1f} s/{self.unit}"
        log.info("%s: %d/%d%s, %s", self.desc, self.n, self.total, share, rate)

    def close(self) -> None:
        if self.n:
            self._line()

    def __enter__(self) -> "Lines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, desc: str, unit: str = "it", enabled: bool = True):
    """A ``tqdm`` bar on a terminal; ``Lines`` elsewhere; a silent bar when not ``enabled``."""
    from tqdm.auto import tqdm

    if not enabled:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit)
    return Lines(total, desc, unit)
