"""Poster loading: portrait resize, orientation, and a clear error per bad file."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posterlens.data import images
from posterlens.data.images import DRAFT_SIZE, PosterError, decode, read_poster_bytes, to_8bit
from posterlens.features.backbones import REGISTRY, resolve, to_array

SPEC = resolve()


def load_poster(path, backbone, mirror: bool = False) -> np.ndarray:
    """Read, decode and normalise one poster file for ``backbone``, as the engines' inputs are made."""
    image = decode(path, read_poster_bytes(path, images.MAX_FILE_BYTES), (backbone.width, backbone.height))
    return to_array(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else image, backbone)


def test_one_decode_serves_every_registered_backbone():
    """A JPEG is drafted to ``DRAFT_SIZE``: at least twice every registered backbone's input."""
    assert all(2 * b.width <= DRAFT_SIZE[0] and 2 * b.height <= DRAFT_SIZE[1] for b in REGISTRY.values())


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


# --------------------------------------------------------------------------- hostile files


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 30), "red").save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would wait for a writer forever
    start = time.perf_counter()
    with pytest.raises(PosterError, match=r"pipe.jpg: a FIFO \(named pipe\), not a poster file"):
        load_poster(tmp_path / "pipe.jpg", SPEC)
    assert time.perf_counter() - start < 1


def test_folder_named_like_a_poster(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(PosterError, match="x.jpg: a folder, not a poster file"):
        read_poster_bytes(tmp_path / "x.jpg")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_symlink_to_dev_zero(tmp_path):
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    start = time.perf_counter()
    with pytest.raises(PosterError, match=r"zero.jpg: a character device \(symlink to /dev/zero\)"):
        load_poster(tmp_path / "zero.jpg", SPEC)
    assert time.perf_counter() - start < 1


def test_symlink_loop(tmp_path):
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    with pytest.raises(PosterError, match="a.jpg: cannot read file"):
        read_poster_bytes(tmp_path / "a.jpg")


def test_symlink_to_a_poster_is_followed(tmp_path):
    (tmp_path / "real.jpg").write_bytes(_jpeg())
    (tmp_path / "link.jpg").symlink_to(tmp_path / "real.jpg")
    assert read_poster_bytes(tmp_path / "link.jpg") == _jpeg()


def test_oversized_file(tmp_path, monkeypatch):
    (tmp_path / "big.jpg").write_bytes(_jpeg() + bytes(2000))
    with pytest.raises(PosterError, match=r"big.jpg: \d[\d,]* bytes: over the 1,000 byte limit"):
        read_poster_bytes(tmp_path / "big.jpg", max_bytes=1000)
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 1000)  # the cap load_poster uses
    with pytest.raises(PosterError, match="over the 1,000 byte limit"):
        load_poster(tmp_path / "big.jpg", SPEC)


def test_at_most_cap_plus_one_bytes_are_read(tmp_path, monkeypatch):
    """A file that grows after the size check (or lies about its size) is still capped."""
    path = tmp_path / "growing.jpg"
    path.write_bytes(bytes(5000))
    real_fstat = os.fstat

    def fstat_says_empty(fd: int) -> os.stat_result:
        info = list(real_fstat(fd))
        info[6] = 0  # st_size
        return os.stat_result(info)

    monkeypatch.setattr(images.os, "fstat", fstat_says_empty)
    with pytest.raises(PosterError, match="over the 100 byte limit"):
        read_poster_bytes(path, max_bytes=100)


def _gradient_16bit() -> np.ndarray:
    return np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (384, 1))  # dark left, bright right


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_keeps_its_gradient(tmp_path, fmt):
    path = tmp_path / f"gray16.{fmt.lower()}"
    Image.fromarray(_gradient_16bit()).save(path, fmt)  # mode I;16
    image = decode(path, path.read_bytes(), (64, 96))
    row = np.asarray(image)[48, :, 0].astype(int)
    assert row.min() <= 5 and row.max() >= 250  # not all white: black to white
    assert np.all(np.diff(row) >= 0) and len(set(row)) > 40  # the gradient survives
    expected = np.linspace(0, 255, 64)
    assert np.abs(row - expected).max() < 8


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.linspace(0, 1, 256, dtype=np.float32), (0, 255)),  # F in 0..1
        (np.linspace(-5, 5, 256, dtype=np.float32), (0, 255)),  # F, stretched
        (np.linspace(0, 65535, 256).astype(np.int32), (0, 255)),  # I holding 16-bit values
        (np.linspace(0, 200, 256).astype(np.int32), (0, 200)),  # I holding 8-bit values
    ],
    ids=["F-unit", "F-range", "I-16bit", "I-8bit"],
)
def test_wide_modes_scaled_by_range(array, expected):
    image = to_8bit(Image.fromarray(np.tile(array, (4, 1))))
    values = np.asarray(image)[0]
    assert image.mode == "L" and (values.min(), values.max()) == expected
    assert np.all(np.diff(values.astype(int)) >= 0)


def test_16bit_rgb_png_is_scaled_not_clipped(tmp_path):
    """Pillow reads 16-bit RGB PNGs as 8-bit RGB (high bytes): check it stays that way."""
    gray = _gradient_16bit()
    rows = b"".join(b"\x00" + np.stack([row] * 3, -1).astype(">u2").tobytes() for row in gray)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", gray.shape[1], gray.shape[0], 16, 2, 0, 0, 0)  # 16-bit RGB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    row = np.asarray(decode("rgb16.png", png, (64, 96)))[48, :, 1].astype(int)
    assert row.min() <= 5 and row.max() >= 250 and np.all(np.diff(row) >= 0)


def test_one_decode_serves_every_size_as_decoding_for_each_alone(tmp_path, monkeypatch):
    """A JPEG far larger than the inputs is drafted to ``DRAFT_SIZE`` for every size (one decode for all)."""
    noise = np.random.default_rng(1).integers(0, 256, (2250, 1500, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    data, sizes = buffer.getvalue(), [(224, 320), (260, 372), (64, 96)]
    drafts = []
    decode_drafted = images._decode_drafted
    monkeypatch.setattr(images, "_decode_drafted", lambda *args: drafts.append(decode_drafted(*args)) or drafts[-1])
    together = images.decode_sizes("large.jpg", data, sizes)
    assert [d.size for d in drafts] == [(750, 1125)]  # decoded once, at 1/2 scale: at least DRAFT_SIZE
    for size, image in zip(sizes, together):
        assert image.size == size
        np.testing.assert_array_equal(np.asarray(image), np.asarray(decode("large.jpg", data, size)))


# --------------------------------------------------------------------------- the fast path


def _encoded(mode: str, size=(300, 440), fmt="JPEG", **options) -> bytes:
    """A smooth gradient poster (so that resizing filters agree closely) in ``mode`` and ``fmt``."""
    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y) * 255 // sum(size)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buffer, fmt, **options)
    return buffer.getvalue()


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[images.ORIENTATION] = 6
    return _encoded("RGB", exif=exif.tobytes())


@pytest.mark.parametrize("make, fast", [
    (lambda: _encoded("RGB"), True),  # the development posters: about 300x440, shrunk to 224x320
    (lambda: _encoded("RGB", progressive=True), True),
    (lambda: _encoded("L"), True),
    (lambda: _encoded("RGB", size=(100, 150)), True),  # enlarged
    (lambda: _encoded("CMYK"), False),
    (lambda: _encoded("RGB", fmt="PNG"), False),
    (_rotated_jpeg, False),
    (lambda: _encoded("RGB", size=(448, 640)), False),  # FAST_SHRINK times the size: Pillow's low-pass resize
], ids=["rgb", "progressive", "grey", "small", "cmyk", "png", "exif-rotated", "large"])
def test_the_fast_path_takes_plain_jpegs_and_stays_close_to_pillow(monkeypatch, make, fast):
    data, size = make(), (SPEC.width, SPEC.height)
    calls = []
    decode_drafted = images._decode_drafted
    monkeypatch.setattr(images, "_decode_drafted", lambda *args: calls.append(1) or decode_drafted(*args))
    got = np.asarray(decode("x.jpg", data, size), dtype=float)
    assert got.shape == (SPEC.height, SPEC.width, 3) and bool(calls) is not fast
    monkeypatch.setattr(images, "FAST_SHRINK", 0.0)  # every image through Pillow
    pillow = np.asarray(decode("x.jpg", data, size), dtype=float)
    assert np.abs(got - pillow).mean() < 1.0  # grey levels, on a smooth image


def test_a_damaged_jpeg_the_fast_path_refuses_is_pillows_to_decode(sample_dir):
    data = _jpeg_bytes(sample_dir)
    damaged = data[:len(data) // 2] + bytes(200) + data[len(data) // 2:]  # libjpeg-turbo warns: strict refuses
    assert images._decode_fast(damaged, [(SPEC.width, SPEC.height)], images.MAX_PIXELS) is None
    assert decode("damaged.jpg", damaged, (SPEC.width, SPEC.height)).size == (SPEC.width, SPEC.height)  # as before
