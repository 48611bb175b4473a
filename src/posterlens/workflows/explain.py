"""Where on the poster a genre comes from: a class-activation heat map per genre.

For each backbone, a torch module runs the poster at the backbone's own size through its
network (``backbones.create_model``: pooled final features + mean and std of the mid-level
blocks), puts the result in its place in the concatenated embedding (the other backbones'
parts held at their values for this poster), standardises it and applies the genre head
and its Platt calibration: the output is the calibrated logit of each genre.

HiResCAM (``pytorch_grad_cam``) is run on every block the embedding reads (``FIRST_BLOCK``
onwards; the last one also feeds the pooled final features). HiResCAM multiplies gradient
and activation element-wise, where Grad-CAM first averages the gradient over the image:
the gradient of a standard-deviation feature sums to zero over the image, so Grad-CAM
would not see the mid-level std features at all (docs/explain.md). Each block's map is
scaled to 0..1, the blocks' maps are averaged (the library's rule), and the backbones' maps,
resized to the poster, are averaged too.
"""

from __future__ import annotations

import io
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from posterlens.data.images import MAX_PIXELS, decode, read_poster_bytes
from posterlens.errors import ModelError
from posterlens.features.backbones import FIRST_BLOCK, create_model, to_array
from posterlens.models.estimators import torch_network

__all__ = ["Explanation", "poster_bytes", "png", "target_layers", "genre_logits", "Explainer", "torch_cat", "overlay",
           "explain", "explainer_for", "explain_poster", "save"]

OVERLAY_WEIGHT = 0.5  # share of the poster in an overlay (the rest is the heat map)


@dataclass
class Explanation:
    """Heat maps of one poster: ``maps[g]`` is (height, width) in 0..1, ``overlays[g]`` PNG bytes."""

    genres: list[str]  # the genres explained, most probable first
    probabilities: dict[str, float]  # every genre, from the torch path
    predicted: list[str]  # the label rule's genres
    maps: dict[str, np.ndarray]
    overlays: dict[str, bytes]
    poster: bytes  # the poster as PNG, at the maps' size

    def as_dict(self) -> dict:
        return {"genres": self.genres, "probabilities": self.probabilities, "predicted": self.predicted,
                "maps": self.maps, "overlays": self.overlays, "poster": self.poster}


def poster_bytes(image) -> bytes:
    """The encoded bytes of a path, bytes, PIL image or HxWx3 uint8 array."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, Path)):
        return read_poster_bytes(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def target_layers(net) -> list:
    """The blocks whose activations the embedding reads (or the network's last block)."""
    inner = getattr(net, "model", net)
    blocks = getattr(inner, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(inner).__name__} has no 'blocks': no target layer for the heat map")
    return list(blocks)[FIRST_BLOCK:] if inner is not net else [blocks[-1]]


def _gradients_from_first_target(net):
    """Only the first target layer's weights require gradients: backward stops there.

    Gradients reach every target layer (all are downstream of the first), and nothing
    is spent on the weights of the other layers or on the large early activations.
    """
    net.requires_grad_(False)
    target_layers(net)[0].requires_grad_(True)
    return net


def genre_logits(net, head, before, after):
    """Module: one backbone's input -> calibrated genre logits, the other backbones' features fixed."""
    import torch
    from torch import nn

    class GenreLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.head = net, torch_network(head.network).requires_grad_(False)
            for name in ("mean", "std", "scale", "bias"):
                self.register_buffer(name, torch.as_tensor(getattr(head, name)))
            self.register_buffer("before", before)
            self.register_buffer("after", after)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = len(x)
            z = torch.cat([self.before.expand(n, -1), self.net(x), self.after.expand(n, -1)], dim=1)
            return self.head((z - self.mean) / self.std) * self.scale + self.bias

    return GenreLogits().eval()


class Explainer:
    """The backbones of a ``PosterModel`` in torch, built once; ``explain`` is thread-safe (one at a time)."""

    def __init__(self, model):
        if model.genre_model is None:
            raise ModelError("this is a score-only model: heat maps show where on the poster each genre comes "
                             "from, and it has no genres (explain needs a model trained on a catalogue with genres)")
        self.model = model
        self.nets = [_gradients_from_first_target(create_model(b)) for b in model.features.backbones]
        self._lock = threading.Lock()

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the maps: the largest backbone input."""
        return max((b.width, b.height) for b in self.model.features.backbones)

    def _inputs(self, data: bytes, max_pixels: int):
        import torch

        return [torch.from_numpy(to_array(decode("poster", data, (b.width, b.height), max_pixels), b))[None]
                for b in self.model.features.backbones]

    def explain(self, image, genres: Sequence[str] | None = None, max_pixels: int = MAX_PIXELS) -> Explanation:
        """Heat maps for ``genres`` (default: the predicted ones), most probable first."""
        import torch

        self.check_genres(genres or ())
        data = poster_bytes(image)
        inputs = self._inputs(data, max_pixels)
        head = genre_logits(torch.nn.Identity(), self.model.genre_model, torch.zeros(1, 0), torch.zeros(1, 0))
        with self._lock, torch.no_grad():
            parts = [net(x) for net, x in zip(self.nets, inputs)]
            P = torch.sigmoid(head(torch.cat(parts, dim=1))).numpy()
        names = self.model.genres
        predicted = [g for g, on in zip(names, self.model.genre_model.labels(P)[0]) if on]  # the image model's own
        chosen = self.chosen(genres, predicted, P[0])
        maps = self.maps(inputs, parts, [names.index(g) for g in chosen])
        poster = np.asarray(decode("poster", data, self.size, max_pixels))
        return Explanation(chosen, {g: float(p) for g, p in zip(names, P[0])}, predicted,
                           dict(zip(chosen, maps)), {g: png(overlay(poster, m)) for g, m in zip(chosen, maps)},
                           png(poster))

    def check_genres(self, genres: Sequence[str]) -> None:
        names = self.model.genres
        unknown = sorted(set(genres) - set(names))
        if unknown:
            raise ValueError(f"unknown genre(s) {', '.join(unknown)}: the model knows {', '.join(names)}")

    def chosen(self, genres: Sequence[str] | None, predicted: list[str], p: np.ndarray) -> list[str]:
        """``genres`` or else the ``predicted`` ones, most probable (``p``) first."""
        names = self.model.genres
        return sorted(dict.fromkeys(genres or predicted), key=lambda g: -p[names.index(g)])

    def maps(self, inputs: list, parts: list, columns: list[int]) -> list[np.ndarray]:
        """One map per genre column: each backbone's HiResCAM, resized to ``size`` and averaged."""
        total = np.zeros((len(columns), self.size[1], self.size[0]), dtype=np.float32)
        for i, (net, x) in enumerate(zip(self.nets, inputs)):
            before, after = torch_cat(parts[:i]), torch_cat(parts[i + 1:])
            module = genre_logits(net, self.model.genre_model, before, after)
            with self._lock:
                cams = _hirescam(module, target_layers(net), x.expand(len(columns), -1, -1, -1), columns)
            total += np.stack([_resize(c, self.size) for c in cams])
        return list(total / len(self.nets))


def torch_cat(parts: list):
    import torch

    return torch.cat(parts, dim=1) if parts else torch.zeros(1, 0)


def _hirescam(module, layers: list, x, columns: list[int]) -> np.ndarray:
    from posterlens import _compat

    _compat.ensure_torchvision()  # pytorch_grad_cam imports torchvision
    from pytorch_grad_cam import HiResCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with HiResCAM(module, layers) as cam:
        return cam(x.contiguous(), [ClassifierOutputTarget(j) for j in columns])


def _resize(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


def overlay(poster: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The heat map (0..1, jet colours) over the poster (HxWx3 uint8)."""
    from posterlens import _compat

    _compat.ensure_torchvision()
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(poster.astype(np.float32) / 255, np.clip(heat, 0, 1), use_rgb=True,
                             image_weight=OVERLAY_WEIGHT)


def explain(model, image, genres: Sequence[str] | None = None, explainer: Explainer | None = None) -> dict:
    """Heat maps of ``image`` for ``genres`` (default: the predicted ones) under ``model`` (a ``PosterModel``).

    Returns ``genres``, ``probabilities``, ``predicted``, ``maps`` (genre -> HxW array in
    0..1), ``overlays`` (genre -> PNG bytes) and ``poster`` (PNG bytes). Pass an
    ``explainer`` (``Explainer(model)``) to reuse its networks across calls.
    """
    return (explainer or Explainer(model)).explain(image, genres).as_dict()


_EXPLAINERS: "weakref.WeakKeyDictionary[object, Explainer]" = weakref.WeakKeyDictionary()
_EXPLAINERS_LOCK = threading.Lock()


def explainer_for(predictor) -> Explainer:
    """The ``Explainer`` of a ``Predictor``, built on first use and dropped with the predictor."""
    with _EXPLAINERS_LOCK:
        if predictor not in _EXPLAINERS:
            _EXPLAINERS[predictor] = Explainer(predictor.model)
        return _EXPLAINERS[predictor]


def explain_poster(predictor, image, genres: Sequence[str] | None = None) -> dict:
    """``explain`` for a ``Predictor``: its model, its networks built once."""
    return explain(predictor.model, image, genres, explainer_for(predictor))


def save(result: dict, out: Path, stem: str) -> list[Path]:
    """Write ``explain``'s overlays as ``<stem>.<genre>.png`` and its maps as ``<stem>.maps.npz`` in ``out``."""
    import re

    from posterlens.safeio import atomic_write, make_dir

    out = make_dir(out)
    written = []
    for genre, data in result["overlays"].items():
        path = out / f"{stem}.{re.sub(r'[^A-Za-z0-9_-]+', '_', genre)}.png"
        with atomic_write(path, "wb") as fh:
            fh.write(data)
        written.append(path)
    path = out / f"{stem}.maps.npz"
    with atomic_write(path, "wb") as fh:
        np.savez_compressed(fh, **result["maps"])
    return [*written, path]
