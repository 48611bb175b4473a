"""Architecture comparison: a quick run on the bundled sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from posterlens.workflows.compare import METRICS, CompareError, compare

KINDS = ("head", "finetune", "cnn", "mlp")
BASELINES = {"baseline: top-2 constant", "baseline: priors"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, sample_dir):
    """`posterlens compare --quick` (default quick models), run from an empty working directory."""
    from typer.testing import CliRunner

    from posterlens.app.cli import app

    work = tmp_path_factory.mktemp("compare")
    cwd = work / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        result = CliRunner().invoke(app, ["compare", "--catalog", str(sample_dir / "MovieGenre.csv"), "--out",
                                          str(work / "out"), "--quick", "--cache", str(work / "cache")])
    assert result.exit_code == 0, result.output
    return pd.read_csv(work / "out" / "compare.csv"), work


def test_every_kind_and_both_baselines_have_a_row(quick_run):
    frame, _ = quick_run
    names = frame["model"].tolist()
    for kind in KINDS:
        assert any(n == kind or n.startswith(f"{kind}:") for n in names), kind
    assert BASELINES <= set(names)


def test_numbers_are_sane(quick_run):
    frame, _ = quick_run
    models = frame[~frame["model"].isin(BASELINES)]
    for column in ["parameters", "size_mb", "train_s_per_epoch", "infer_ms_per_poster"]:
        values = models[column].to_numpy(dtype=float)
        assert np.isfinite(values).all() and (values > 0).all(), column
    scores = frame[METRICS].to_numpy(dtype=float)
    assert np.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert frame.loc[frame["model"].isin(BASELINES), "parameters"].isna().all()


def test_files_are_written_and_checkpoints_cleaned_up(quick_run):
    frame, work = quick_run
    out = work / "out"
    for name in ("compare.csv", "compare.md", "compare.png"):
        assert (out / name).stat().st_size > 0, name
    assert pd.read_csv(out / "compare.csv")["model"].tolist() == frame["model"].tolist()
    text = (out / "compare.md").read_text()
    assert "| model" in text and "holdout_split" in text and "posterlens compare" in text
    assert not any((work / "cwd").iterdir())  # fastai checkpoints went to a temporary directory


def test_unknown_model_is_refused_before_any_work(tmp_path, sample_dir):
    with pytest.raises(CompareError, match="unknown model 'resnet'"):
        compare(sample_dir / "MovieGenre.csv", None, tmp_path / "out", models=["resnet"], cache=tmp_path)
    assert not (tmp_path / "out").exists()
