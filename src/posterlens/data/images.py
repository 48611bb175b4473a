"""Poster files: read safely, decode, orient, resize (to 8-bit RGB at a given size).

The common poster (an 8-bit RGB or grey JPEG, not rotated, at most ``FAST_SHRINK`` times the
size asked for) is decoded by libjpeg-turbo through simplejpeg and resized by OpenCV's
bilinear filter (``_decode_fast``); anything else by Pillow, which words every error.

Posters are about 2:3 portrait, so callers ask for portrait sizes (a backbone's input,
e.g. 224 wide x 320 high) rather than squares. Normalising for a network is the
backbone's business (``features.backbones.to_array``).

Files are checked before they are read (``read_poster_bytes``): a FIFO, device, folder or
socket named ``x.jpg``, or a file over ``MAX_FILE_BYTES``, is a ``PosterError``, not a hang
or an out-of-memory. 16-bit and float images are scaled to 8 bits by their range.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from posterlens.errors import PosterError

__all__ = ["PosterError", "MAX_PIXELS", "MAX_FILE_BYTES", "DRAFT_SIZE", "FAST_SHRINK", "content_hash", "decode", "decode_sizes",
           "to_8bit", "read_poster_bytes", "scan_folder", "IMAGE_SUFFIXES"]

ORIENTATION = 0x0112  # the EXIF tag ImageOps.exif_transpose applies
MAX_PIXELS = 40_000_000  # larger images are refused as decompression bombs
MAX_FILE_BYTES = 50_000_000  # larger poster files are refused before they are read
# JPEGs are decoded at a reduced scale that stays at least this size (width, height), the same
# for every backbone, so that one decode serves them all: at least twice the largest registered
# input (a test holds every registered backbone to it).
DRAFT_SIZE = (520, 744)
# the fast path resizes without a low-pass filter, so only images less than this many times the size asked
# for take it (Pillow never drafts them); the development posters (about 300x440 to 224x320): 2.2x faster to
# decode and resize, lite0's f32 embeddings within cosine 0.985 (least) / 0.9987 (median) of Pillow's
FAST_SHRINK = 2.0


def content_hash(data: bytes) -> str:
    """Identity of an image's bytes (the feature cache key)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode(path: str | Path, data: bytes, size: tuple[int, int], max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``data`` to an RGB image of ``size`` (width, height), EXIF orientation applied."""
    return decode_sizes(path, data, [size], max_pixels)[0]


def decode_sizes(path: str | Path, data: bytes, sizes: Sequence[tuple[int, int]],
                 max_pixels: int = MAX_PIXELS) -> list[Image.Image]:
    """``decode`` at several sizes, decoding ``data`` once (once per ``_draft_size``).

    Each size is resized from the image drafted to ``_draft_size(size)``, which depends on
    that size alone: a backbone's pixels are the same whichever other sizes are asked for.
    """
    try:
        fast = _decode_fast(data, sizes, max_pixels)
        if fast is not None:
            return fast
        drafts = {size: _draft_size(size) for size in sizes}
        decoded = {draft: _decode_drafted(path, data, draft, max_pixels) for draft in set(drafts.values())}
        return [decoded[drafts[size]].resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0) for size in sizes]
    except PosterError:
        raise
    except UnidentifiedImageError:
        raise PosterError(path, "not an image (Pillow cannot identify it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise PosterError(path, f"decompression bomb refused ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise PosterError(path, f"corrupt or truncated image ({err})") from None


def _decode_fast(data: bytes, sizes: Sequence[tuple[int, int]], max_pixels: int) -> list[Image.Image] | None:
    """``decode_sizes`` for an 8-bit RGB or grey JPEG without EXIF rotation, less than ``FAST_SHRINK``
    times each size: simplejpeg's decode (libjpeg-turbo, as Pillow's) and OpenCV's bilinear resize.
    None for any other image, or one that libjpeg-turbo reports as damaged: Pillow decodes those."""
    simplejpeg, cv2 = _fast_libraries()
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:  # not a JPEG, or a damaged one
        return None
    if colorspace not in ("YCbCr", "Gray", "RGB") or width * height > max_pixels:
        return None
    if any(width >= FAST_SHRINK * w or height >= FAST_SHRINK * h for w, h in sizes) or _rotated(data):
        return None
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        return None
    return [Image.fromarray(cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)) for size in sizes]


def _rotated(jpeg: bytes) -> bool:
    """Whether a JPEG's EXIF (or XMP) orientation is anything but upright, as ``ImageOps.exif_transpose``
    reads it; Pillow looks only where the headers hold an APP1 segment (``FF E1``), where both live."""
    import io

    if b"\xff\xe1" not in jpeg[:max(jpeg.find(b"\xff\xda"), 0)]:
        return False
    try:
        return Image.open(io.BytesIO(jpeg)).getexif().get(ORIENTATION, 1) != 1
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return True  # Pillow's path words the error


@functools.cache
def _fast_libraries():
    """simplejpeg and cv2, OpenCV on one thread: posters are decoded a thread each, beside the network
    (its own threads on small images cost 0.1 ms a poster here)."""
    import cv2
    import simplejpeg

    cv2.setNumThreads(1)
    return simplejpeg, cv2


def _draft_size(size: tuple[int, int]) -> tuple[int, int]:
    """What a JPEG is drafted to before it is resized to ``size``: ``DRAFT_SIZE``, or ``size`` where larger."""
    return max(size[0], DRAFT_SIZE[0]), max(size[1], DRAFT_SIZE[1])


def _decode_drafted(path: str | Path, data: bytes, draft: tuple[int, int], max_pixels: int) -> Image.Image:
    """``data`` as an 8-bit RGB image, EXIF orientation applied; a JPEG at least ``draft`` in size
    is decoded at a reduced scale (1/2, 1/4 or 1/8) that keeps it at least ``draft``."""
    import io

    if not data:
        raise PosterError(path, "empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise PosterError(path, f"{image.width}x{image.height} pixels: over the {max_pixels:,} limit (decompression bomb?)")
        image.draft("RGB", draft)
        ImageOps.exif_transpose(image, in_place=True)
        image = to_8bit(image)
        return image if image.mode == "RGB" else image.convert("RGB")


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit (``I;16*``), 32-bit (``I``) and float (``F``) images as 8-bit ``L``, scaled by range.

    ``convert("RGB")`` would clip them (a 16-bit poster turns white). 16-bit values are
    divided by 257 (65535 -> 255); ``I`` values the same unless they already fit in 0..255;
    floats in 0..1 are multiplied by 255; anything else is stretched from its min to its max.
    Other modes (including 16-bit RGB PNGs, which Pillow reads as 8-bit RGB) are unchanged.
    """
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    x = np.nan_to_num(np.asarray(image, dtype=np.float32), posinf=0.0, neginf=0.0)
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and 0 <= low and 255 < high <= 65535):
        x = x / 257.0
    elif image.mode == "F" and 0 <= low and high <= 1:
        x = x * 255.0
    elif low < 0 or high > 255:
        x = (x - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), "L")


_FILE_KINDS = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket")]


def _not_regular(mode: int) -> str | None:
    """What a non-regular file is (``"a FIFO (named pipe)"``...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def read_poster_bytes(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a poster file, checked before they are read.

    Symlinks are resolved; the target must be a regular file (not a FIFO, device, folder
    or socket: checked with ``stat`` before opening, so nothing blocks) of at most
    ``max_bytes``. At most ``max_bytes + 1`` bytes are ever read. Raises ``PosterError``.
    """
    path = Path(path)
    try:
        real = path.resolve(strict=True)
        kind = _not_regular(os.stat(real).st_mode)
        if kind is None:
            return _read_capped(path, real, max_bytes)
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python < 3.13)
        raise PosterError(path, f"cannot read file ({getattr(err, 'strerror', None) or err})") from None
    shown = f" (symlink to {real})" if real != path.absolute() else ""
    raise PosterError(path, f"{kind}{shown}, not a poster file")


def _read_capped(path: Path, real: Path, max_bytes: int) -> bytes:
    """Read a file ``stat`` said is regular; re-checked on the open descriptor (no race)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(real, flags)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        kind = _not_regular(info.st_mode)
        if kind is not None:  # swapped after the stat
            raise PosterError(path, f"{kind}, not a poster file")
        if info.st_size > max_bytes:
            raise PosterError(path, f"{info.st_size:,} bytes: over the {max_bytes:,} byte limit for a poster")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew since the fstat
        raise PosterError(path, f"over the {max_bytes:,} byte limit for a poster")
    return data


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}  # what a folder of posters holds (catalog too)
NOT_POSTERS = {".csv", ".json", ".txt", ".md"}  # files a poster folder often holds beside its posters


def scan_folder(folder: str | Path) -> list[Path]:
    """Every entry of a folder that may be a poster, by name: regular files (except hidden ones and
    ``NOT_POSTERS``) and anything else named like an image (a FIFO, device or folder called ``x.jpg``),
    so that reading it reports why it is not a poster instead of leaving it out silently."""
    found = []
    for entry in os.scandir(folder):
        path = Path(entry.path)
        if entry.name.startswith(".") or path.suffix.lower() in NOT_POSTERS:
            continue
        try:
            regular = entry.is_file(follow_symlinks=True)
        except OSError:
            regular = False
        if regular or path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
    return sorted(found)
