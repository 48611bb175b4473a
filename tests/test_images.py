"""Poster loading: portrait resize, orientation, and a clear error per bad file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from posterlens.backbones import resolve
from posterlens.images import PosterError, load_poster

SPEC = resolve()


def test_poster_is_resized_to_portrait_input_and_normalised(sample_dir):
    poster = next((sample_dir / "images").iterdir())
    x = load_poster(poster, SPEC)
    assert x.shape == (3, SPEC.height, SPEC.width) and x.dtype == np.float32
    assert -1.01 <= x.min() and x.max() <= 1.01  # (x - 127) / 128


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")  # stored landscape...
    image.paste((0, 0, 255), (0, 0, 20, 20))  # ...left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # ...to be shown rotated 90 degrees clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    x = load_poster(tmp_path / "rotated.jpg", SPEC)
    top, bottom = x[:, : SPEC.height // 4].mean(axis=(1, 2)), x[:, -SPEC.height // 4 :].mean(axis=(1, 2))
    assert top[2] > top[0] and bottom[0] > bottom[2]  # blue on top after rotation


def test_mirror(sample_dir):
    poster = next((sample_dir / "images").iterdir())
    assert np.allclose(load_poster(poster, SPEC, mirror=True), load_poster(poster, SPEC)[:, :, ::-1], atol=1e-5)


def _jpeg_bytes(sample_dir) -> bytes:
    return next((sample_dir / "images").iterdir()).read_bytes()


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: b"", "empty file"),
        (lambda d: b"<html><body>404 not found</body></html>", "not an image"),
        (lambda d: _jpeg_bytes(d)[: len(_jpeg_bytes(d)) // 2], "corrupt or truncated"),
        (lambda d: _jpeg_bytes(d)[:200] + bytes(5000), "corrupt or truncated"),
    ],
    ids=["empty", "text-named-jpg", "truncated", "corrupt"],
)
def test_bad_files_raise_a_clear_per_file_error(tmp_path, sample_dir, make, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(make(sample_dir))
    with pytest.raises(PosterError, match=f"bad.jpg: {reason}"):
        load_poster(path, SPEC)


def test_decompression_bomb_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, "PNG")  # 81 Mpx in a few kB
    (tmp_path / "bomb.png").write_bytes(buffer.getvalue())
    with pytest.raises(PosterError, match="bomb.png: 9000x9000 pixels: over the"):
        load_poster(tmp_path / "bomb.png", SPEC)


def test_missing_file(tmp_path):
    with pytest.raises(PosterError, match="nope.jpg: cannot read file"):
        load_poster(tmp_path / "nope.jpg", SPEC)
