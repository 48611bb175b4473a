"""The command line: help everywhere, embed end to end, clear errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from posterlens.cli import app

runner = CliRunner()


def _commands() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_embed_twice_uses_the_cache(small_catalog, shared_cache):
    args = ["embed", "--catalog", str(small_catalog), "--cache", str(shared_cache)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    row = [line for line in second.output.splitlines() if line.strip().startswith("│") and "8" in line][-1]
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:4] == ["8", "0", "8", "0"]  # posters, computed, from cache, failed


def test_bad_catalog_is_a_clear_error(tmp_path):
    bad = tmp_path / "movies.csv"
    bad.write_text("imdbId,Title\n1,A\n")
    result = runner.invoke(app, ["embed", "--catalog", str(bad)])
    assert result.exit_code == 2
    assert "movies.csv: missing column(s) IMDB Score, Genre" in " ".join(result.output.split())
