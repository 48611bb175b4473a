"""A tampered model directory is data confined to its folder: paths it names are never followed,
keys outside the schema are refused, and the server hands out only what the model carries."""

from __future__ import annotations

import os
import shutil

import pytest
from fastapi.testclient import TestClient

import posterlens
from posterlens.app import serve
from posterlens.models import directory
from posterlens.models.directory import ModelError


@pytest.fixture
def model_copy(trained_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(trained_model, copy)
    return copy


def test_paths_in_config_json_are_never_followed(model_copy, rewrite_config, tmp_path, shared_cache):
    """``catalog``/``images`` (keys older models wrote) pointing at /etc are accepted and never read:
    /api/poster serves the model's thumbnails, and nothing for a movie without one."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "MovieGenre.csv").write_text("imdbId,Title,IMDB Score,Genre\n1,x,5,Drama\n")
    (secret / "passwd.jpg").write_text("root:x:0:0")

    def point_outside(config):
        config["catalog"], config["images"] = str(secret / "MovieGenre.csv"), "/etc"

    rewrite_config(model_copy, point_outside)
    predictor = posterlens.load(model_copy, shared_cache)
    assert predictor.poster_files == {} and "catalog" not in predictor.model.info
    with TestClient(serve.create_app(predictor)) as client:
        for movie_id in ("passwd", "../etc/passwd", "tt0000001"):
            response = client.get(f"/api/poster/{movie_id}")
            assert response.status_code == 404 and b"root:" not in response.content
        known = predictor.index.movies["id"].iloc[0]
        assert client.get(f"/api/poster/{known}").headers["content-type"] == "image/webp"


def test_a_posters_folder_is_only_read_inside_itself(model_copy, tmp_path, shared_cache, sample_dir):
    folder = tmp_path / "posters"
    folder.mkdir()
    movie = posterlens.load(model_copy, shared_cache).index.movies["id"].iloc[0]
    (folder / f"{movie}.jpg").symlink_to("/etc/passwd")  # a link out of the folder is not followed
    predictor = posterlens.load(model_copy, shared_cache, posters=folder)
    assert movie not in predictor.poster_files


@pytest.mark.parametrize("change, message", [
    (lambda c: c.__setitem__("run_me", "import os"), "unknown key(s) ['run_me']"),
    (lambda c: c.__setitem__("n_train", "many"), "'n_train' has the wrong type"),
    (lambda c: c.__setitem__("validation", [1, 2]), "'validation' has the wrong type"),
])
def test_keys_outside_the_schema_are_refused(model_copy, rewrite_config, change, message):
    rewrite_config(model_copy, change)
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")) as err:
        directory.load(model_copy)
    assert "\n" not in str(err.value) and str(model_copy) in str(err.value)


def _rechecksum(model_dir, rewrite_config):
    """Recompute the checksums of every file, as an attacker (or a bad copy tool) would."""
    rewrite_config(model_dir, lambda c: c["files"].update(
        {name: directory.sha256(model_dir / name) for name in c["files"]}))


def _tamper_arrays(path, change):
    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(path))
    change(arrays)
    save_file(arrays, str(path))


@pytest.mark.parametrize("file, change, message", [
    ("genre_model.safetensors", lambda a: a["module.0.weight"].__setitem__((0, 0), float("nan")), "not finite"),
    ("genre_model.safetensors", lambda a: a["thresholds"].__setitem__(0, float("inf")), "not finite"),
    ("score_model.safetensors", lambda a: a["ridge.coef_"].__setitem__(0, float("nan")), "not finite"),
    ("score_model.safetensors", lambda a: a["scale.n_features_in_"].__setitem__(0, 0), "must be positive"),
])
def test_numbers_that_are_not_numbers_are_refused(model_copy, rewrite_config, file, change, message):
    _tamper_arrays(model_copy / file, change)
    _rechecksum(model_copy, rewrite_config)
    with pytest.raises(ModelError, match=message) as err:
        directory.load(model_copy)
    assert file in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("file, cut", [("similar.hnsw", 0.5), ("similar_movies.csv", 0.7)])
def test_a_damaged_similar_index_is_one_line(model_copy, rewrite_config, file, cut, shared_cache, sample_dir):
    from typer.testing import CliRunner

    from posterlens.app.cli import app

    data = (model_copy / file).read_bytes()
    (model_copy / file).write_bytes(data[:int(len(data) * cut)])
    _rechecksum(model_copy, rewrite_config)
    with pytest.raises(ModelError, match="similar-movies index is damaged"):
        posterlens.load(model_copy, shared_cache)
    poster = sorted((sample_dir / "images").glob("*.jpg"))[0]
    result = CliRunner().invoke(app, ["predict", "-m", str(model_copy), str(poster)])
    assert result.exit_code == 2 and "damaged" in result.output and "Traceback" not in result.output


# --- tracebacks that are now one line ---------------------------------------------------------

def _cli(*args):
    from typer.testing import CliRunner

    from posterlens.app.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_explain_into_an_existing_file_is_one_line(tmp_path, sample_dir):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    result = _cli("explain", "-i", sorted((sample_dir / "images").glob("*.jpg"))[0], "-o", taken)
    assert result.exit_code == 2 and "cannot write" in result.output and "Traceback" not in result.output


def test_weights_that_are_not_a_model_are_one_line(tmp_path, small_catalog):
    fake = tmp_path / "weights.pth"
    fake.write_bytes(b"not a torch file at all")
    result = _cli("train", "-c", small_catalog, "-o", tmp_path / "m", "--backbone", "efficientnet_lite0", "--weights", fake,
                  "--min-genre-count", "1")
    assert result.exit_code == 2 and "not a weights file" in result.output and "Traceback" not in result.output


def test_predicting_an_empty_folder_is_a_usage_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _cli("predict", "-i", empty, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "no files that may be posters" in result.output
    assert not (tmp_path / "out").exists()


def test_a_space_listing_too_many_values_is_refused(tmp_path):
    import json

    from posterlens.errors import SpaceError
    from posterlens.workflows import tune

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"score": {"alpha": list(range(1500))}}))
    with pytest.raises(SpaceError, match="1,500 values; at most 1,000"):
        tune.load_space(space)
    space.write_text(json.dumps({"score": {"alpha": list(range(2_000_000))}}))  # 15 MB: refused unread
    with pytest.raises(SpaceError, match="over 1,000,000 bytes"):
        tune.load_space(space)


def test_a_config_json_nested_too_deep_is_one_line(model_copy):
    (model_copy / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelError, match="nested too deep|not valid JSON|not a JSON object"):
        directory.load(model_copy)


# --- full disks and read-only folders ----------------------------------------------------------

def test_train_onto_a_full_disk_is_one_line_and_keeps_the_old_model(model_copy, monkeypatch, small_catalog):
    """safetensors reports ENOSPC as its own error type: still one line, and the model already there stays."""
    import errno

    from safetensors import SafetensorError

    import posterlens.models.fitted as fitted

    def full(*args, **kwargs):
        raise SafetensorError(f"Error while serializing: IoError({os.strerror(errno.ENOSPC)})")

    before = (model_copy / "config.json").read_text()
    monkeypatch.setattr(fitted, "save_arrays", full)
    monkeypatch.setattr(directory, "save_arrays", full)
    result = _cli("train", "-c", small_catalog, "-o", model_copy, "--min-genre-count", "1", "--holdout", "0",
                  "--epochs", "1")
    assert result.exit_code == 2 and "cannot write the model" in result.output and "Traceback" not in result.output
    assert (model_copy / "config.json").read_text() == before


def test_predict_into_an_unwritable_folder_is_one_line(trained_model, sample_dir, tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "out":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    poster = sorted((sample_dir / "images").glob("*.jpg"))[0]
    result = _cli("predict", "-m", trained_model, poster, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "Read-only file system" in result.output and "Traceback" not in result.output


def test_a_feature_cache_that_cannot_be_written_warns_once_and_embeds_on(tmp_path, monkeypatch, sample_dir, caplog):
    import errno

    from posterlens.features import backbones
    from posterlens.features.embed import embed_files

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("safetensors.numpy.save_file", full)
    posters = sorted((sample_dir / "images").glob("*.jpg"))[:10]
    with caplog.at_level("WARNING"):
        result = embed_files(posters, backbones.resolve("efficientnet_lite0"), tmp_path / "cache", batch_size=4,
                             progress=False)
    assert result.ok.all() and caplog.text.count("cannot write to the feature cache") == 1
    assert not list((tmp_path / "cache" / "features").rglob("*.safetensors"))


# --- my own probes: a new user's broken files, an attacker's crafted ones -------------------

def test_a_config_json_that_is_a_link_out_of_the_folder_is_refused(model_copy):
    (model_copy / "config.json").unlink()
    (model_copy / "config.json").symlink_to("/etc/passwd")
    with pytest.raises(ModelError, match="a link, not a file of the model directory"):
        directory.load(model_copy)


def test_reports_into_an_existing_file_are_one_line(trained_model, sample_dir, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for args in (("evaluate", "-m", trained_model, "-c", sample_dir / "MovieGenre.csv", "-o", taken),
                 ("similar", "-m", trained_model, "-i", sorted((sample_dir / "images").glob("*.jpg"))[0], "-o", taken)):
        result = _cli(*args)
        assert result.exit_code == 2 and "a file has that name" in result.output, result.output
        assert "Traceback" not in result.output


def test_one_poster_is_too_few_for_a_holdout_and_says_what_to_do(tmp_path, sample_dir):
    catalogue = tmp_path / "MovieGenre.csv"
    catalogue.write_text("imdbId,Imdb Link,Title,IMDB Score,Genre,Poster\n85154,l,T,5.0,Drama|Romance,x\n")
    result = _cli("train", "-c", catalogue, "-i", sample_dir / "images", "-o", tmp_path / "m", "--min-genre-count", "1")
    assert result.exit_code == 2 and "1 poster is too few for a 20% holdout" in result.output
    assert "lower --min-genre-count" not in result.output


def test_a_device_as_catalogue_is_named_for_what_it_is(tmp_path):
    result = _cli("train", "-c", "/dev/null", "-o", tmp_path / "m")
    assert result.exit_code == 2 and "not a regular file" in result.output


def test_a_space_is_held_to_the_estimators_ranges(tmp_path):
    from posterlens.errors import SpaceError
    from posterlens.workflows import tune

    space = tmp_path / "space.yaml"
    space.write_text("genre:\n  hidden: [0, 100000000]\n")
    with pytest.raises(SpaceError, match=r"genre.hidden: 100000000 is out of range \[0, 65,536\]"):
        tune.load_space(space)
    space.write_bytes(b"genre:\n  wd: [\xff\xfe]\n")
    with pytest.raises(SpaceError, match="not UTF-8"):
        tune.load_space(space)
