"""The command line: help everywhere, a light import, conventions, embed end to end, clear errors."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from posterlens import __version__
from posterlens.app.cli import app, validation_table

runner = CliRunner()
HEAVY = ("torch", "timm", "fastai", "sklearn", "onnxruntime", "openvino", "pandas", "matplotlib", "numpy", "PIL")


def _commands() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_importing_the_cli_imports_no_heavy_library():
    code = f"import posterlens.app.cli, sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_python_m_posterlens_and_version():
    done = subprocess.run([sys.executable, "-m", "posterlens", "--version"], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, f"posterlens {__version__}")
    assert runner.invoke(app, ["--version"]).output.strip() == f"posterlens {__version__}"


def test_common_options_have_short_flags():
    import typer.main

    commands = typer.main.get_command(app).commands
    flags = {(name, opt) for name, cmd in commands.items() for p in cmd.params for opt in p.opts}
    for command, short in (("predict", "-m"), ("predict", "-o"), ("predict", "-i"), ("predict", "-c"),
                           ("predict", "-k"), ("similar", "-k"), ("similar", "-m"), ("train", "-c"), ("train", "-o")):
        assert (command, short) in flags


def test_third_party_logging_is_quiet_unless_verbose():
    runner.invoke(app, ["embed", "--help"])  # the callback does not run for --help
    runner.invoke(app, ["similar", "--image", "missing.jpg", "--model", "missing"])
    assert logging.getLogger("httpx").level == logging.WARNING
    assert logging.getLogger("openvino").level == logging.WARNING
    runner.invoke(app, ["-v", "similar", "--image", "missing.jpg", "--model", "missing"])
    assert logging.getLogger("httpx").level == logging.NOTSET


def test_embed_twice_uses_the_cache(small_catalog, shared_cache):
    args = ["embed", "--catalog", str(small_catalog), "--cache", str(shared_cache)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    row = [line for line in second.output.splitlines() if line.strip().startswith("│") and "8" in line][-1]
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:4] == ["8", "0", "8", "0"]  # posters, computed, from cache, failed


def test_bad_catalog_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "movies.csv"
    bad.write_text("imdbId,Title\n1,A\n")
    result = runner.invoke(app, ["embed", "-c", str(bad)], env={"COLUMNS": "60"})
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert "movies.csv: missing column(s) IMDB Score, Genre" in result.output


def test_missing_model_is_one_line_naming_the_option(tmp_path, monkeypatch, sample_dir):
    from posterlens.workflows import predict

    monkeypatch.setattr(predict, "released_model_dir", lambda: tmp_path / "released")
    poster = sorted((sample_dir / "images").iterdir())[0]
    result = runner.invoke(app, ["predict", str(poster), "-o", str(tmp_path / "out")], env={"COLUMNS": "60"})
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {predict.NO_RELEASED_MODEL}"


def test_validation_is_shown_next_to_its_baselines():
    validation = {"method": "5-fold cross-validation",
                  "genre": {"micro_f1": {"mean": 0.41, "std": 0.02}, "macro_f1": 0.3, "genres_per_poster": 2.1,
                            "true_genres_per_poster": 2.4, "baselines": {"top2_constant": {"macro_f1": 0.12}}},
                  "score": {"mae": 0.84, "baseline_mae": 0.95, "spearman": 0.3}}
    console = Console(record=True, width=100)
    console.print(validation_table(validation))
    rows = [[c.strip() for c in line.rstrip()[1:-1].split("│")] for line in console.export_text().splitlines()
            if line.startswith("│")]
    assert rows == [["genre macro_f1", "0.300", "0.120 (top-2 constant)"],
                    ["genre micro_f1", "0.410 ± 0.020", ""],
                    ["genre genres_per_poster", "2.100", "2.400 (true)"],
                    ["score mae", "0.840", "0.950 (predicting the mean)"],
                    ["score spearman", "0.300", ""]]


def test_a_missing_images_folder_is_a_usage_error_naming_the_option(tmp_path):
    result = runner.invoke(app, ["predict", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "out")],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "'--images' / '-i'" in result.output and "does not exist" in result.output


def test_train_ends_with_validation_next_to_baselines(sample_dir, shared_cache, tmp_path):
    result = runner.invoke(app, ["train", "-c", str(sample_dir / "MovieGenre.csv"), "-o", str(tmp_path / "model"),
                                 "--epochs", "1", "--min-genre-count", "10", "--no-refit", "--cache", str(shared_cache)],
                           env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model" / "config.json").is_file()
    assert "validation: 20% holdout (seed 42)" in result.output
    assert any("score mae" in line and "(predicting the mean)" in line for line in result.output.splitlines())
