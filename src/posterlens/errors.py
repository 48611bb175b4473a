"""The errors posterlens raises about a user's input: one line that names the file, row or
option and what to do. The CLI turns every ``UserError`` into that line and exit code 2.

This module imports nothing heavy, so the CLI imports it directly. Each class keeps the
built-in base it always had (``ValueError``, ``RuntimeError``, ``OSError``), so code that
caught those still does.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "UserError", "SettingsError", "CatalogError", "PosterError", "DataError", "BackboneError", "EngineError",
    "TextUnavailable", "TextModelError", "ModelError", "OutputError", "TrainError", "SpaceError",
    "EvaluationError", "CompareError", "CorrectionsError",
]


class UserError(Exception):
    """Base of every error about the user's input (the CLI: one line, exit code 2)."""


class SettingsError(UserError, ValueError):
    """A setting is out of its range, not one of its choices, or inconsistent with another."""


class CatalogError(UserError, ValueError):
    """A catalogue cannot be read: the message names the file, the row and the problem."""


class PosterError(UserError, ValueError):
    """A poster file cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class DataError(UserError, ValueError):
    """The data cannot serve this job (no readable poster, no genres, too few posters...)."""


class BackboneError(UserError, RuntimeError):
    """A backbone cannot be built: unknown name, or no weights available offline."""


class EngineError(UserError, RuntimeError):
    """An engine that was asked for cannot run here; the message says what to install or use."""


class TextUnavailable(UserError, RuntimeError):
    """``--text`` was asked for where rapidocr is not installed."""


class TextModelError(UserError, ValueError):
    """A text model file is missing, damaged or does not fit the model; the message names it."""


class ModelError(UserError, RuntimeError):
    """A model directory cannot be loaded; the message names the file and the problem."""


class OutputError(UserError, OSError):
    """An output file cannot be written; the message names the file and what to do."""

    def __init__(self, path: str | Path, err: OSError):
        import errno

        reason = err.strerror or str(err)
        advice = {errno.EEXIST: "a file has that name: choose another path",
                  errno.ENOTDIR: "a file stands where a folder should be: choose another path",
                  errno.ENOSPC: "free some space or choose another location"}.get(
            err.errno, "free some space or choose a writable location")
        super().__init__(err.errno, f"{path}: cannot write ({reason}); {advice}")
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror


class TrainError(DataError):
    """Training cannot run on this input."""


class SpaceError(TrainError):
    """A search space or a config file is not valid; the message names the file and the key."""


class EvaluationError(DataError):
    """Nothing to evaluate on."""


class CompareError(DataError):
    """The comparison cannot run: unknown model name, unreadable catalogue..."""


class CorrectionsError(UserError, ValueError):
    """A corrections database (``serve --review``, ``train --corrections``) cannot be opened or read,
    or a correction is not valid."""
