"""Downloader hostile input, round 3: link-local hosts stay closed, bombs are cut while they
inflate, and a folder or FIFO named like a poster is reported, never opened."""

from __future__ import annotations

import asyncio
import os
import tracemalloc
import zlib

import pandas as pd
import pytest

import posterlens.data.http as http_module
from posterlens.data.fetch import FetchConfig, fetch_posters


def _catalog(urls: dict[str, str | None]) -> pd.DataFrame:
    return pd.DataFrame({"id": list(urls), "url": list(urls.values())})


def test_allow_private_hosts_never_opens_the_metadata_service(tmp_path, monkeypatch, caplog):
    async def metadata(host: str, port: int) -> list[str]:
        return ["169.254.169.254"]

    monkeypatch.setattr(http_module, "_resolve", metadata)
    config = FetchConfig(retries=0, timeout=5.0, allow_private_hosts=True)
    summary = fetch_posters(_catalog({"tt0000001": "http://metadata.test/latest/x.jpg"}), tmp_path, config,
                            progress=False)
    assert summary.counts == {"blocked_host": 1}
    assert "link-local" in caplog.text


def test_a_folder_or_fifo_named_like_a_poster_is_reported_and_left_alone(tmp_path):
    (tmp_path / "tt0000001.jpg").mkdir()
    os.mkfifo(tmp_path / "tt0000002.jpg")
    catalog = _catalog({"tt0000001": "http://127.0.0.1:9/a.jpg", "tt0000002": "http://127.0.0.1:9/b.jpg",
                        "tt0000003": None})
    summary = fetch_posters(catalog, tmp_path, FetchConfig(retries=0, timeout=2.0, allow_private_hosts=True),
                            progress=False)
    assert summary.counts == {"not_a_file": 2, "no_url": 1}
    assert (tmp_path / "tt0000001.jpg").is_dir() and (tmp_path / "manifest.csv").is_file()


class _Bomb:
    """A response whose raw body is gzip of ``size`` zero bytes, produced chunk by chunk."""

    def __init__(self, size: int, encoding: str = "gzip"):
        self.size, self.headers = size, {"content-encoding": encoding}

    async def aiter_raw(self, chunk_size: int):
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        block = bytes(1 << 20)
        for _ in range(self.size >> 20):
            out = packer.compress(block)
            if out:
                yield out
        yield packer.flush()


def test_a_compression_bomb_is_cut_at_the_cap_while_it_inflates():
    """1 GB of zeros, about 1 MB gzipped: the body is refused, and memory never holds more than the cap."""
    tracemalloc.start()
    try:
        body = asyncio.run(http_module._read_body(_Bomb(1 << 30), max_bytes=10_000_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert body is None
    assert peak < 40_000_000, f"peak {peak:,} bytes for a 10 MB cap"


def test_an_encoding_that_was_not_asked_for_is_refused():
    with pytest.raises(http_module.UnsupportedEncoding):
        asyncio.run(http_module._read_body(_Bomb(1 << 20, "br"), max_bytes=10_000_000))
