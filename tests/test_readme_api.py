"""The README's Python examples run as written (on the test model, in a folder with a poster.jpg)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The ```python code blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_python_blocks_are_found():
    assert python_blocks("a\n```python\nx = 1\n```\n```bash\nls\n```\n") == ["x = 1\n"]


@pytest.fixture
def readme_folder(tmp_path, monkeypatch, trained_model, sample_dir):
    """A working folder where the names the README uses exist: ``poster.jpg``, ``runs/model``
    and the released model (the test model)."""
    from posterlens.workflows import predict

    shutil.copy(sorted((sample_dir / "images").iterdir())[0], tmp_path / "poster.jpg")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "model").symlink_to(trained_model, target_is_directory=True)
    monkeypatch.setattr(predict, "released_model_dir", lambda: trained_model)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_python_examples_run(readme_folder):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, f"{README}: no ```python examples"
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{README.name} python block {i + 1}", "exec"), namespace)  # noqa: S102
