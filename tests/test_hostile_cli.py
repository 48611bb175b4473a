"""Bad options and hostile inputs at the command line: one line, exit code 2, nothing half-written."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from posterlens.app.cli import app

BAD_OPTIONS = {
    "embed --batch-size 0": (["embed", "-c", "{catalog}", "--batch-size", "0"], "--batch-size"),
    "embed --engine bogus": (["embed", "-c", "{catalog}", "--engine", "bogus"], "--engine"),
    "similar -k -3": (["similar", "-m", "{model}", "--image", "{poster}", "-k", "-3"], "-k"),
    "predict --similar -1": (["predict", "-m", "{model}", "{poster}", "--similar", "-1"], "--similar"),
    "train --holdout 2": (["train", "-c", "{catalog}", "-o", "{tmp}/m", "--holdout", "2"], "--holdout"),
    "train --epochs 0": (["train", "-c", "{catalog}", "-o", "{tmp}/m", "--epochs", "0"], "--epochs"),
    "fetch --concurrency 0": (["fetch", "-c", "{catalog}", "-o", "{tmp}/i", "--concurrency", "0"], "concurrency"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_options_exit_2_naming_the_option(case, small_catalog, trained_model, sample_dir, tmp_path):
    args, name = BAD_OPTIONS[case]
    poster = next((sample_dir / "images").iterdir())
    values = {"catalog": small_catalog, "model": trained_model, "poster": poster, "tmp": tmp_path}
    result = CliRunner().invoke(app, [a.format(**values) for a in args])
    assert result.exit_code == 2, result.output
    assert name in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_formula_titles_are_neutralised_in_the_output(small_catalog, trained_model, tmp_path):
    rows = pd.read_csv(small_catalog, dtype=str, keep_default_na=False)
    rows.loc[0, "Title"] = '=HYPERLINK("http://evil.example","click")'
    rows.to_csv(small_catalog, index=False)
    result = CliRunner().invoke(app, ["predict", "-m", str(trained_model), "-c", str(small_catalog), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "o" / "predictions_final.csv").read_text()
    assert "'=HYPERLINK" in text and ',=HYPERLINK' not in text


def test_predict_into_a_full_disk_is_one_line_and_leaves_no_temporary_file(trained_model, sample_dir, tmp_path,
                                                                           monkeypatch):
    import os

    poster = next((sample_dir / "images").iterdir())
    real_replace = os.replace

    def disk_full(src, dst, *args, **kwargs):
        if str(dst).endswith(".csv"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full)
    result = CliRunner().invoke(app, ["predict", "-m", str(trained_model), str(poster), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "No space left on device" in result.output and "Traceback" not in result.output
    assert not [p for p in (tmp_path / "o").rglob("*") if p.name.startswith(".")]


def test_int8_engine_without_nncf_is_one_line(small_catalog, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nncf", None)  # as if not installed
    result = CliRunner().invoke(app, ["embed", "-c", str(small_catalog), "--engine", "openvino-int8",
                                      "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 2, result.output
    assert "nncf, which is not installed" in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing embedded, nothing half-made
