"""The backbone registry gives real ImageNet weights, offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from posterlens.features import backbones
from posterlens.features.backbones import to_array

ESPRESSO = 967  # ImageNet class index


def _classify(spec: backbones.Backbone, image: Image.Image) -> int:
    model = backbones.create_model(spec, classifier=True)
    square = image.resize((spec.width, spec.width), Image.Resampling.BICUBIC)
    x = torch.from_numpy(to_array(square, spec))[None]
    with torch.inference_mode():
        return int(model(x).argmax())


@pytest.mark.parametrize("name", list(backbones.REGISTRY))
def test_registered_backbones_are_real_imagenet_weights(name):
    data = pytest.importorskip("skimage.data")
    coffee = Image.fromarray(data.coffee())
    assert _classify(backbones.resolve(name), coffee) == ESPRESSO


def test_default_backbone_preprocessing_comes_from_registry():
    spec = backbones.resolve()
    assert spec.name == "efficientnet_lite0"
    assert (spec.width, spec.height) == (224, 320)
    assert np.allclose(np.array(spec.mean) * 255, 127) and np.allclose(np.array(spec.std) * 255, 128)
    x = torch.zeros(2, 3, spec.height, spec.width)
    with torch.inference_mode():
        assert backbones.create_model(spec)(x).shape == (2, spec.feature_dim)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(backbones.BackboneError, match="unknown backbone 'not_a_net'"):
        backbones.resolve("not_a_net")


def test_timm_model_without_offline_weights_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = backbones.resolve("resnet18")
    with pytest.raises(backbones.BackboneError, match="no offline weights for 'resnet18'"):
        backbones.create_model(spec)


def test_timm_model_with_a_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("resnet18", pretrained=False)
    save_file(reference.state_dict(), str(tmp_path / "r18.safetensors"))
    spec = backbones.resolve("resnet18", tmp_path / "r18.safetensors")
    model = backbones.create_model(spec)
    x = torch.randn(1, 3, 64, 64)
    reference.reset_classifier(0)
    with torch.inference_mode():
        assert torch.allclose(model(x), reference.eval()(x))


def test_weights_that_do_not_fit_are_refused(tmp_path):
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet10t", pretrained=False).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(backbones.BackboneError, match="resnet18"):
        backbones.create_model(backbones.resolve("resnet18", tmp_path / "w.safetensors"))


def test_torchvision_imports_on_cpu_torch():
    import torchvision  # noqa: F401  (the compat module ran first)

    assert torch.ops.torchvision.nms is not None


@pytest.mark.parametrize("name", list(backbones.REGISTRY))
def test_registered_feature_dims(name):
    spec = backbones.resolve(name)
    with torch.inference_mode():
        assert backbones.create_model(spec)(torch.zeros(1, 3, 64, 64)).shape == (1, spec.feature_dim)
