"""Heat maps: shape and overlays, and two sanity checks (the map depends on the genre and on the head)."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image

import posterlens
from posterlens.workflows.explain import Explainer, explain, explain_poster, explainer_for

POSTER = "tt0085154.jpg"


@pytest.fixture(scope="module")
def predictor(trained_model, shared_cache):
    return posterlens.load(trained_model, shared_cache)


@pytest.fixture(scope="module")
def poster(sample_dir):
    return sample_dir / "images" / POSTER


@pytest.fixture(scope="module")
def explained(predictor, poster) -> dict:
    """The most and the least probable genre of the poster."""
    P = predictor.predict(poster).iloc[0][predictor.model.genres].astype(float)
    return explain_poster(predictor, poster, [P.idxmax(), P.idxmin()])


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_maps_and_overlays(predictor, poster, explained):
    first = explained["genres"][0]
    heat = explained["maps"][first]
    assert heat.shape == (372, 260) and 0 <= heat.min() and heat.max() <= 1 and heat.std() > 0.01
    overlay = Image.open(io.BytesIO(explained["overlays"][first]))
    assert overlay.format == "PNG" and overlay.size == (260, 372)
    table = predictor.predict(poster).iloc[0]
    assert explained["predicted"] == list(table["genres"])  # the torch path agrees with predict
    assert explained["probabilities"][first] == pytest.approx(table[first], abs=0.02)


def test_default_is_the_predicted_genres_and_unknown_ones_are_refused(predictor, poster):
    explainer = explainer_for(predictor)
    names = predictor.model.genres
    p = np.linspace(0, 1, len(names))
    assert explainer.chosen(None, names[:2], p) == [names[1], names[0]]  # most probable first
    assert explainer.chosen(names[3:4], names[:2], p) == [names[3]]
    with pytest.raises(ValueError, match="unknown genre"):
        explain_poster(predictor, poster, ["Opera"])


def test_map_changes_with_the_genre(explained):
    top, bottom = explained["genres"]
    r = correlation(explained["maps"][top], explained["maps"][bottom])
    print(f"correlation of the maps of {top} and {bottom}: {r:.2f}")
    assert r < 0.5  # 0.36 here (docs/explain.md)


def test_randomised_head_destroys_the_map(predictor, poster, explained):
    model = copy.deepcopy(predictor.model)
    weight = model.genre_model.network.layers[0][0]
    weight[...] = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)).numpy() * weight.std()
    randomised = explain(model, poster, explained["genres"], Explainer(model))
    for genre in explained["genres"]:  # 0.35 and 0.48 here (docs/explain.md)
        r = correlation(explained["maps"][genre], randomised["maps"][genre])
        print(f"{genre}: correlation with the map of a randomised head {r:.2f}")
        assert r < 0.6


def test_save_writes_overlays_and_maps(explained, tmp_path):
    from posterlens.workflows.explain import save

    written = save(explained, tmp_path, "poster")
    assert [p.name for p in written] == [f"poster.{g}.png" for g in explained["genres"]] + ["poster.maps.npz"]
    with np.load(written[-1]) as maps:
        np.testing.assert_array_equal(maps[explained["genres"][0]], explained["maps"][explained["genres"][0]])
