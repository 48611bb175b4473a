"""Settings' rules, stated once beside each setting, and the reader of settings files.

A config dataclass or an estimator declares ``RULES``: a ``Range`` or a ``Choice`` per
setting, in the spirit of scikit-learn's ``_parameter_constraints``. ``check`` enforces
them wherever a value comes from: the CLI, the DAG's params, a ``--config`` file, a tune
space or a model directory. ``read_file`` reads a JSON or YAML settings file with its size
and nesting depth capped, from regular files only.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from posterlens.errors import SettingsError

__all__ = ["Range", "Choice", "Rule", "check", "check_value", "read_file", "MAX_FILE_BYTES", "MAX_DEPTH"]

MAX_FILE_BYTES = 1_000_000  # a settings file (``--config``, ``--space``) larger than this is refused unread
MAX_DEPTH = 32  # JSON/YAML nested deeper than this is refused


@dataclass(frozen=True)
class Range:
    """A number in ``[low, high]``; ``integer``: a whole number (not a bool); ``none``: None allowed too."""

    low: float
    high: float
    integer: bool = False
    none: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.none else "expected a value, got null"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected {'a whole number' if self.integer else 'a number'}, got {value!r}"
        if self.integer and not isinstance(value, int):
            return f"expected a whole number, got {value!r}"
        if not math.isfinite(value) or not self.low <= value <= self.high:
            return f"{value!r} is out of range [{_number(self.low)}, {_number(self.high)}]"
        return None


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (compared by equality: strings, booleans...)."""

    options: tuple

    def problem(self, value: Any) -> str | None:
        if any(value == o and type(value) is type(o) for o in self.options):
            return None
        return f"{value!r} is not one of {', '.join(map(str, self.options))}"


Rule = Range | Choice


def _number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def check_value(rule: Rule, value: Any, name: str) -> None:
    """Raise ``SettingsError`` naming ``name`` where ``value`` breaks ``rule``."""
    problem = rule.problem(value)
    if problem:
        raise SettingsError(f"{name}: {problem}")


def check(rules: Mapping[str, Rule], values: Mapping[str, Any], where: str = "", flag: bool = False) -> None:
    """Every value that has a rule, checked; a ``SettingsError`` names ``where`` and the setting
    (as a ``--flag`` with ``flag``)."""
    for name, value in values.items():
        if name in rules:
            shown = f"--{name.replace('_', '-')}" if flag else name
            check_value(rules[name], value, f"{where}: {shown}" if where else shown)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON-like value, stopping early past ``limit`` (no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _read_capped(path: Path, max_bytes: int) -> str:
    """A regular file's text (UTF-8), at most ``max_bytes``: FIFOs and devices are refused before opening."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise SettingsError(f"{path}: cannot read ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        raise SettingsError(f"{path}: not a regular file")
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SettingsError(f"{path}: over {max_bytes:,} bytes: not a settings file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SettingsError(f"{path}: not UTF-8 text (byte {err.start})") from None


def read_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """A JSON (``.json``) or YAML (anything else) settings file, size- and depth-capped."""
    path = Path(path)
    text = _read_capped(path, max_bytes)
    try:
        if path.suffix.lower() == ".json":
            loaded = json.loads(text)
        else:
            import yaml

            loaded = yaml.safe_load(text)
    except RecursionError:
        raise SettingsError(f"{path}: nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as err:
        raise SettingsError(f"{path}: not valid JSON: {err}") from None
    except Exception as err:  # yaml.YAMLError, without importing yaml for JSON files
        raise SettingsError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if _depth(loaded, max_depth) > max_depth:
        raise SettingsError(f"{path}: nested deeper than {max_depth} levels")
    return loaded
