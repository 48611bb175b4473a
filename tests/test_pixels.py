"""The from-pixels estimators keep the scikit-learn contract and the label rule, on a tiny random set."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.base import clone

from posterlens.models.pixels import FineTunedBackbone, PixelCNN, PixelMLP, augment

N, GENRES, SIZE = 30, 3, (16, 24)  # posters, genres, (width, height)
BACKBONE_SIZE = (64, 96)  # the backbone's deepest block needs more than one pixel
FAST = {"epochs": 1, "batch_size": 8, "max_labels": 2}
ESTIMATORS = {
    "cnn": lambda: PixelCNN(filters=4, **FAST),
    "mlp": lambda: PixelMLP(**FAST),
    "finetune": lambda: FineTunedBackbone(backbone="mobilenet_v2", head_epochs=1, **FAST),
}


def random_posters(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 posters (N, 3, H, W) and a 0/1 genre matrix where every genre has posters."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (N, 3, size[1], size[0]), dtype=np.uint8)
    Y = (rng.random((N, GENRES)) < 0.4).astype(np.float32)
    Y[np.arange(N), np.arange(N) % GENRES] = 1.0
    return X, Y


@pytest.fixture(scope="module")
def posters() -> tuple[np.ndarray, np.ndarray]:
    return random_posters(SIZE)


@pytest.fixture(scope="module", params=sorted(ESTIMATORS))
def fitted(request):
    """(estimator, what fit returned, its posters)."""
    X, Y = random_posters(BACKBONE_SIZE if request.param == "finetune" else SIZE)
    estimator = ESTIMATORS[request.param]()
    return estimator, estimator.fit(X, Y), X


@pytest.mark.parametrize("kind", sorted(ESTIMATORS))
def test_params_round_trip_and_clone(kind):
    estimator = ESTIMATORS[kind]()
    params = estimator.get_params()
    assert type(estimator)(**params).get_params() == params
    copy = clone(estimator)
    assert copy.get_params() == params and copy is not estimator
    assert copy.set_params(epochs=3).epochs == 3 and estimator.epochs == 1
    assert not [name for name in vars(copy) if name.endswith("_")]  # nothing learned before fit


def test_fit_returns_self_and_shapes(fitted):
    estimator, result, X = fitted
    assert result is estimator
    P = estimator.predict_proba(X)
    assert P.shape == (N, GENRES) and P.dtype == np.float32
    assert ((P >= 0) & (P <= 1)).all()
    L = estimator.predict(X)
    assert L.shape == (N, GENRES) and set(np.unique(L)) <= {0.0, 1.0}
    assert_allclose(L, estimator.labels(P))
    assert estimator.input_size_ == (X.shape[3], X.shape[2]) and sum(estimator.epochs_run_) >= 1
    assert estimator.thresholds_.shape == (GENRES,)
    assert all(np.isfinite(a).all() for a in estimator.to_arrays().values())


def test_labels_obey_the_label_rule(fitted):
    estimator, _, X = fitted
    counts = estimator.predict(X).sum(axis=1)
    assert (counts >= 1).all() and (counts <= estimator.max_labels).all()
    P = estimator.predict_proba(X)
    assert_allclose(estimator.labels(P), estimator.rule_.predict(P))
    assert (estimator.rule_.max_labels, estimator.rule_.threshold_scale) == (2, estimator.threshold_scale)


def test_clone_of_a_fitted_estimator_is_unfitted(fitted):
    estimator, _, _ = fitted
    copy = clone(estimator)
    assert not hasattr(copy, "module_") and copy.get_params() == estimator.get_params()


def test_same_seed_same_model(posters):
    X, Y = posters
    first, second = PixelCNN(filters=4, **FAST).fit(X, Y), PixelCNN(filters=4, **FAST).fit(X, Y)
    assert_allclose(first.predict_proba(X), second.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_bad_posters_are_refused(fitted):
    estimator, _, X = fitted
    width, height = estimator.input_size_
    with pytest.raises(ValueError, match=r"uint8 posters \(N, 3, H, W\)"):
        estimator.predict_proba(X.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="uint8"):
        estimator.predict_proba(X.astype(np.float32))
    with pytest.raises(ValueError, match=f"fitted on {width}x{height}"):
        estimator.predict_proba(X[:, :, :height // 2, :width // 2])


def test_default_sizes():
    assert PixelCNN().default_size == (128, 192) and PixelMLP().default_size == (48, 72)
    assert FineTunedBackbone().default_size == (224, 320)


def test_augment_keeps_shape_and_range():
    import torch

    torch.manual_seed(0)
    x = torch.rand(4, 3, 24, 16)
    y = augment(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
