"""Make the CUDA build of torchvision importable next to CPU-only torch.

The torchvision 0.28.0 wheel on PyPI is built for CUDA. With the CPU torch wheel its
``import`` fails with ``RuntimeError: operator torchvision::nms does not exist`` because
the compiled ops library cannot load. Defining the two op schemas it registers fake
kernels for lets the Python package import; ``torchvision.ops.nms`` and
``torchvision.io.decode_jpeg`` stay unusable (posterlens decodes images with Pillow).

Call ``ensure_torchvision()`` before anything that imports torchvision (timm, fastai).
Importing this module changes nothing.
"""

from __future__ import annotations

import sys

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARY: torch.library.Library | None = None


def ensure_torchvision() -> None:
    """Import torchvision, defining its missing op schemas first if needed."""
    global _LIBRARY
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _LIBRARY = torch.library.Library("torchvision", "DEF")  # kept alive for the process
        for schema in _SCHEMAS:
            _LIBRARY.define(schema)
        import torchvision  # noqa: F401

