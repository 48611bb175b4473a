"""Safe output files: atomic writes and CSV cells that spreadsheets will not run.

* ``atomic_write(path)`` writes to a hidden temporary sibling (``.{name}.{random}.tmp``)
  and renames it over ``path`` only when the block succeeds, so a crash, Ctrl-C or a full
  disk never leaves a half-written file under the final name (nor the temporary file).
* ``write_csv``, ``write_text`` and ``write_json`` are atomic writes of common formats;
  ``write_csv`` also neutralises spreadsheet formulas (``neutralise``).
* Any ``OSError`` while writing (no space, read-only folder, no permission) becomes an
  ``OutputError`` whose one-line message names the file and what to do.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pandas as pd

from posterlens.errors import OutputError

__all__ = ["OutputError", "make_dir", "atomic_write", "remove_stale_temps", "neutralise", "neutralise_frame",
           "write_csv", "write_text", "write_json"]

# A cell starting with one of these is a formula to Excel, LibreOffice or Google Sheets.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def make_dir(path: str | Path) -> Path:
    """``path`` as a folder (made with its parents where missing), or an ``OutputError`` naming it
    (a file of that name, a read-only parent, a full disk)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(path, err) from None
    return path


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; replace ``path`` with it on success.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (binary). On any exception the temporary file
    is removed and ``path`` is left as it was; an ``OSError`` is raised as ``OutputError``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:  # O_EXCL: never an existing file; mode 0o666 minus the umask, like open()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise OutputError(path, err) from None
    try:
        text = {"encoding": encoding, "newline": newline} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OutputError):
            raise
        raise OutputError(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete temporaries that a killed ``atomic_write(path)`` left behind; return them."""
    path = Path(path)
    stale = list(path.parent.glob(f".{_glob_escape(path.name)}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def neutralise(value: Any) -> Any:
    """Prefix ``'`` to a string a spreadsheet would run as a formula; other values unchanged.

    >>> neutralise("=HYPERLINK(\\"http://x\\")"), neutralise("-3"), neutralise(-3)
    ('\\'=HYPERLINK("http://x")', "'-3", -3)
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def neutralise_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with ``neutralise`` applied to column names and text cells.

    Numbers stay numbers (a negative score is not text); only string cells change.
    """
    out = df.rename(columns=lambda c: neutralise(str(c)))
    for column in out.columns[[not pd.api.types.is_numeric_dtype(t) for t in out.dtypes]]:
        out[column] = out[column].map(neutralise)
    return out


def write_csv(df: pd.DataFrame, path: str | Path, index: bool = False) -> Path:
    """Write ``df`` as UTF-8 CSV atomically, formulas neutralised; return ``path``."""
    path = Path(path)
    with atomic_write(path, newline="") as fh:
        neutralise_frame(df).to_csv(fh, index=index)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` as UTF-8 atomically; return ``path``."""
    path = Path(path)
    with atomic_write(path) as fh:
        fh.write(text)
    return path


def write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (UTF-8, keys in given order, trailing newline) atomically."""
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")
