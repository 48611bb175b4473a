"""Poster loading: decode, orient, resize to the backbone's input, normalise.

Posters are about 2:3 portrait, so they are resized to the backbone's portrait input
(e.g. 224 wide x 320 high) rather than squashed to a square.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from posterlens.backbones import Backbone

MAX_PIXELS = 40_000_000  # larger images are refused as decompression bombs


class PosterError(ValueError):
    """A poster file cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def content_hash(data: bytes) -> str:
    """Identity of an image's bytes (the feature cache key)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode(path: str | Path, data: bytes, size: tuple[int, int], max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``data`` to an RGB image of ``size`` (width, height), EXIF orientation applied."""
    import io

    if not data:
        raise PosterError(path, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise PosterError(path, f"{image.width}x{image.height} pixels: over the {max_pixels:,} limit (decompression bomb?)")
            image.draft("RGB", size)  # JPEG: decode at a reduced scale when much larger
            image = ImageOps.exif_transpose(image).convert("RGB")
            return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    except PosterError:
        raise
    except UnidentifiedImageError:
        raise PosterError(path, "not an image (Pillow cannot identify it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise PosterError(path, f"decompression bomb refused ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise PosterError(path, f"corrupt or truncated image ({err})") from None


def to_array(image: Image.Image, backbone: Backbone) -> np.ndarray:
    """HWC uint8 image -> CHW float32, normalised as the backbone's weights expect."""
    x = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(backbone.mean, dtype=np.float32)) / np.asarray(backbone.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_poster(path: str | Path, backbone: Backbone, mirror: bool = False) -> np.ndarray:
    """Read, decode and normalise one poster file for ``backbone`` (CHW float32)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise PosterError(path, f"cannot read file ({err.strerror or err})") from None
    image = decode(path, data, (backbone.width, backbone.height))
    if mirror:
        image = ImageOps.mirror(image)
    return to_array(image, backbone)
