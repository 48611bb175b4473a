"""posterlens tune: quick searches on the bundled sample, best.json round trip, bad spaces and configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posterlens.workflows import tune
from posterlens.workflows.train import TrainConfig

SAMPLE_CSV = Path(__file__).resolve().parents[1] / "examples" / "sample" / "MovieGenre.csv"
OUTPUTS = ("tune.csv", "tune.md", "best.json", "tune_sensitivity.png")


@pytest.fixture(scope="module", params=sorted(tune.SPACES))
def searched(request, tmp_path_factory, shared_cache):
    """(space, out, frame) of a quick search of each built-in space: 2 folds, defaults + 1 drawn configuration."""
    out = tmp_path_factory.mktemp(request.param)
    frame = tune.tune(SAMPLE_CSV, None, out, shared_cache, space=request.param, folds=2, budget=1, quick=True,
                      progress=False)
    return request.param, out, frame


def test_quick_search_writes_every_output(searched):
    space, out, frame = searched
    assert all((out / name).is_file() for name in OUTPUTS)
    assert set(frame["model"]) == ({"cnn"} if space == "cnn" else {"genre", "score"})
    for model, rows in frame.groupby("model"):
        assert len(rows) == 2 and rows["default"].sum() == 1
        metric = tune.RANK[model]
        assert rows[[f"{metric}_fold0", f"{metric}_fold1"]].notna().all().all()
        assert (rows["parameters"] > 0).all() and (rows["fit_s"] > 0).all()
        assert (out / f"tune_{model}.png").is_file()
    text = (out / "tune.md").read_text()
    assert "95% t-interval over 2 folds" in text and "Best - defaults" in text


def test_best_json_reproduces_the_best_configuration(searched):
    space, out, frame = searched
    if space == "cnn":
        pytest.skip("best.json holds the embedding models' settings")
    config = TrainConfig(**TrainConfig.from_file(out / "best.json"))
    for model, estimator in (("genre", config.genre_estimator()), ("score", config.score_estimator())):
        best = frame[(frame["model"] == model) & (frame["rank"] == 1)].iloc[0]
        params = json.loads(best["params"])
        expected = {k: v for k, v in params.items() if k in estimator.get_params()}
        assert {k: estimator.get_params()[k] for k in expected} == expected
        assert config.backbones == params.get("backbones", config.backbones) or model == "score"
    if space == "heads":  # the quick settings were part of what was scored
        assert config.genre_estimator().epochs == tune.QUICK["genre"]["epochs"]


@pytest.mark.parametrize("text, key", [
    ("genre:\n  wd: [1, 3]\n  depth: [2]\n", "genre.depth"),
    ("genre:\n  wd: 3\n", "genre.wd"),
    ("genre:\n  wd: []\n", "genre.wd"),
    ("genre:\n  wd: [high]\n", "genre.wd"),
    ("genre:\n  hidden: [1.5]\n", "genre.hidden"),
    ("genre:\n  calibration_folds: [1]\n", "genre.calibration_folds"),
    ("genre:\n  pos_weight: [yes please]\n", "genre.pos_weight"),
    ("score:\n  alpha: [-1]\n", "score.alpha"),
    ("features:\n  backbones: [[resnet_nonexistent]]\n", "features.backbones"),
    ("cnn:\n  schedule: [cosine]\n", "cnn.schedule"),
    ("heads:\n  wd: [1]\n", "'heads'"),
    ("genre: [wd]\n", "genre"),
    ("genre:\n  wd: [1, 3\n", "YAML"),
])
def test_bad_space_file_is_one_clear_error(tmp_path, text, key):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(tune.SpaceError) as err:
        tune.load_space(path)
    assert str(err.value).startswith(f"{path}: ") and key in str(err.value) and "\n" not in str(err.value)


def test_custom_space_files(tmp_path):
    yaml_file, json_file = tmp_path / "space.yml", tmp_path / "space.json"
    yaml_file.write_text("features:\n  backbones: [efficientnet_lite0+mobilenet_v2]\n  width: [null, 224]\n"
                         "genre:\n  wd: [10, 30.0]\n")
    json_file.write_text(json.dumps({"score": {"alpha": [1, 3]}}))
    assert tune.load_space(yaml_file) == {"features": {"backbones": [["efficientnet_lite0", "mobilenet_v2"]],
                                                       "width": [None, 224]}, "genre": {"wd": [10, 30.0]}}
    assert tune.load_space(json_file) == {"score": {"alpha": [1, 3]}}
    with pytest.raises(tune.SpaceError, match="not a built-in space"):
        tune.load_space(tmp_path / "missing.yaml")


@pytest.mark.parametrize("content, message", [
    ({"genre": {"wd": 10.0}, "epochs": 3}, r"unknown key\(s\) \['epochs'\]"),
    ({"genre": {"depth": 2}}, "unknown genre model setting"),
    ({"score": [1]}, "score: expected an object"),
    ({"backbones": "efficientnet_lite0"}, "--backbone: give one or more backbone names"),
    ({"genre": {"wd": "strong"}}, "genre: wd: expected a number, got 'strong'"),
    ({"text": "yes"}, "--text: 'yes' is not one of False, True"),
    ({"folds": 2.5}, "--folds: expected a whole number"),
    ({"holdout": "0.2"}, "--holdout: expected a number"),
])
def test_read_config_rejects_bad_files(tmp_path, content, message):
    from posterlens.errors import SettingsError

    path = tmp_path / "best.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SettingsError, match=message) as err:
        TrainConfig.from_file(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_candidates_start_with_the_defaults():
    grid = {"model__wd": [1.0, 3.0, 10.0], "model__hidden": [0, 64]}
    assert tune.candidates(grid, 100, 0)[0] == {} and len(tune.candidates(grid, 100, 0)) == 7  # the whole grid
    drawn = tune.candidates(grid, 2, 0)
    assert drawn[0] == {} and len(drawn) == 3


def test_a_huge_grid_is_counted_and_drawn_from_never_listed():
    """Ten settings of nine values each: 3.5 billion configurations, never listed."""
    grid = {f"model__p{i}": list(range(9)) for i in range(10)}
    drawn = tune.candidates(grid, 12, 0)
    assert drawn[0] == {} and len(drawn) == 13 and len({tuple(sorted(c.items())) for c in drawn[1:]}) == 12


def test_restrict_renumbers_folds():
    import numpy as np

    rows = np.array([True, False, True, True])
    splits = [(np.array([0, 1]), np.array([2, 3])), (np.array([2, 3]), np.array([0, 1]))]
    assert [(a.tolist(), b.tolist()) for a, b in tune.restrict(splits, rows)] == [([0], [1, 2]), ([1, 2], [0])]


def test_a_draw_equal_to_the_defaults_is_not_scored_twice():
    from sklearn.pipeline import Pipeline

    from posterlens.models.pixels import PixelCNN

    estimator = Pipeline([("model", PixelCNN())])
    configs = [{}, {"model__filters": 32}, {"model__filters": 16}]
    assert tune.new_settings(estimator, configs) == [{}, {"model__filters": 16}]


def test_train_cli_takes_its_settings_from_best_json(sample_dir, shared_cache, tmp_path):
    import json

    from typer.testing import CliRunner

    from posterlens.app.cli import app

    best = tmp_path / "best.json"
    best.write_text(json.dumps({"backbones": ["efficientnet_lite0"], "genre": {"epochs": 2, "wd": 10.0}, "score": {}}))
    result = CliRunner().invoke(app, ["train", "-c", str(sample_dir / "MovieGenre.csv"), "-o", str(tmp_path / "m"),
                                      "--cache", str(shared_cache), "--min-genre-count", "10", "--config", str(best)])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert [b["name"] for b in config["backbones"]] == ["efficientnet_lite0"]
    assert config["genre_model"]["params"]["epochs"] == 2 and config["genre_model"]["params"]["wd"] == 10.0
    best.write_text(json.dumps({"genre": {"epochs": "many"}}))
    bad = CliRunner().invoke(app, ["train", "-c", str(sample_dir / "MovieGenre.csv"), "-o", str(tmp_path / "x"),
                                   "--config", str(best)])
    assert bad.exit_code == 2 and "epochs" in bad.output and "Traceback" not in bad.output
