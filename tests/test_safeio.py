"""Atomic output files and formula-safe CSV cells."""

from __future__ import annotations

import errno
import json
import os
import sys

import pandas as pd
import pytest

from posterlens import safeio
from posterlens.safeio import (
    OutputError,
    atomic_write,
    neutralise,
    remove_stale_temps,
    write_csv,
    write_json,
    write_text,
)


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as fh:
            fh.write("half")
            raise RuntimeError("boom")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_write(path) as fh:
        fh.write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]


def _fail(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


def test_disk_full_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "predictions.csv"
    monkeypatch.setattr(pd.DataFrame, "to_csv", _fail(errno.ENOSPC))
    with pytest.raises(OutputError) as caught:
        write_csv(pd.DataFrame({"a": [1]}), path)
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot write (No space left on device)") and "\n" not in message
    assert "free some space" in message and caught.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_read_only_file_system(tmp_path, monkeypatch):
    (tmp_path / "report.json").write_text("{}")
    monkeypatch.setattr(safeio.os, "replace", _fail(errno.EROFS))
    with pytest.raises(OutputError, match=r"report.json: cannot write \(Read-only file system\)"):
        write_json(tmp_path / "report.json", {"a": 1})
    assert os.listdir(tmp_path) == ["report.json"] and (tmp_path / "report.json").read_text() == "{}"


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_folder(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(OutputError, match=r"report.json: cannot write \(Permission denied\)"):
            write_json(tmp_path / "report.json", {"a": 1})
    finally:
        tmp_path.chmod(0o700)
    assert os.listdir(tmp_path) == []


def test_missing_folder(tmp_path):
    with pytest.raises(OutputError, match=r"nowhere/x.txt: cannot write \(No such file"):
        write_text(tmp_path / "nowhere" / "x.txt", "x")


def test_write_csv_neutralises_formulas_but_not_numbers(tmp_path):
    df = pd.DataFrame({
        "title": ["=HYPERLINK(\"http://evil\",\"x\")", "+1", "-cmd", "@SUM(A1)", "\tx", "\rx", "Heat", None],
        "score": [-1.5, 2.0, -3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        "n": [-1, 2, 3, 4, 5, 6, 7, 8],
        "=evil": ["a"] * 8,
    })
    path = write_csv(df, tmp_path / "p.csv")
    back = pd.read_csv(path, keep_default_na=False, lineterminator="\n")
    assert list(back.columns) == ["title", "score", "n", "'=evil"]
    assert list(back["title"]) == [
        "'=HYPERLINK(\"http://evil\",\"x\")", "'+1", "'-cmd", "'@SUM(A1)", "'\tx", "'\rx", "Heat", ""]
    assert back["score"].tolist() == df["score"].tolist()  # still numbers, negative ones too
    assert back["n"].tolist() == df["n"].tolist()
    assert neutralise(-3) == -3 and neutralise("Drama") == "Drama"


def test_write_json_and_text_round_trip(tmp_path):
    obj = {"genres": ["Drama", "Sci-Fi"], "title": "Amélie"}
    assert json.loads(write_json(tmp_path / "a.json", obj).read_text(encoding="utf-8")) == obj
    assert write_text(tmp_path / "a.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"


def test_remove_stale_temps_only_touches_its_own_file(tmp_path):
    (tmp_path / ".m.csv.0a1b.tmp").write_text("x")
    (tmp_path / ".other.csv.0a1b.tmp").write_text("x")
    assert [p.name for p in remove_stale_temps(tmp_path / "m.csv")] == [".m.csv.0a1b.tmp"]
    assert os.listdir(tmp_path) == [".other.csv.0a1b.tmp"]


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with safeio.atomic_write(tmp_path / "x", "a"):
            pass
