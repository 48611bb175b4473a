"""Tests for posterlens.fetch against a real HTTP server on 127.0.0.1 (tests/http_faults.py)."""

from __future__ import annotations

import asyncio
import errno
import gzip
import io
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from http_faults import FaultServer, Reply
from PIL import Image

import posterlens.data.fetch as fetch_module
import posterlens.data.http as http_module
from posterlens.data.fetch import (
    MANIFEST_COLUMNS,
    FetchConfig,
    FetchSummary,
    fetch_posters,
    select,
    url_variants,
    validate_image,
)
from posterlens.safeio import OutputError

SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "examples" / "sample" / "images"
V1 = "/images/M/MV5Bvariant@._V1_UX182_CR0,0,182,268_AL_.jpg"
V1_FULL = "/images/M/MV5Bvariant@._V1_.jpg"
V1_HTML = "/images/M/MV5Bhtml@._V1_UX182_CR0,0,182,268_AL_.jpg"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def posters() -> list[bytes]:
    paths = sorted(SAMPLE_IMAGES.glob("*.jpg"))
    assert len(paths) >= 120
    return [p.read_bytes() for p in paths]


def make_catalog(rows: dict[str, str | None]) -> pd.DataFrame:
    """A catalogue with the columns of ``posterlens.catalog.read_catalog``."""
    return pd.DataFrame(
        {
            "id": list(rows),
            "title": [f"Movie {i}" for i in rows],
            "genres": [["Drama"] for _ in rows],
            "score": [7.0 for _ in rows],
            "path": [None for _ in rows],
            "url": list(rows.values()),
        }
    )


def read_manifest(out_dir: Path) -> pd.DataFrame:
    return pd.read_csv(out_dir / "manifest.csv", dtype={"imdbId": str}, keep_default_na=False)


def loads(path: Path) -> bool:
    with Image.open(path) as im:
        im.load()
    return True


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bomb_png() -> bytes:
    """8000x8000 1-bit PNG: 8 KB on disk, 64 Mpixels (> the 40 M default limit)."""
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- pure functions


def test_url_variants_amazon() -> None:
    base = "https://images-na.ssl-images-amazon.com/images/M/MV5BNDQz@._V1_"
    url = base + "UX182_CR0,0,182,268_AL_.jpg"
    assert url_variants(url) == [url, base + ".jpg", base + "SX300.jpg"]


def test_url_variants_full_size_and_plain() -> None:
    full = "https://m.media-amazon.com/images/M/MV5Bx@._V1_.jpg"
    assert url_variants(full) == [full, "https://m.media-amazon.com/images/M/MV5Bx@._V1_SX300.jpg"]
    plain = "https://example.org/posters/tt0084058.jpg"
    assert url_variants(plain) == [plain]


def test_select_limit_and_random() -> None:
    catalog = make_catalog({f"tt{i:07d}": None for i in range(20)})
    assert list(select(catalog, limit=5)["id"]) == list(catalog["id"][:5])
    sampled = select(catalog, sample="random:7", seed=1)
    assert len(sampled) == 7 and sampled["id"].is_unique
    assert list(sampled.index) == sorted(sampled.index)  # catalogue order
    assert sampled.equals(select(catalog, sample="random:7", seed=1))  # reproducible
    assert len(select(catalog, sample="random:100")) == 20
    assert len(select(catalog, sample="random:7", limit=3)) == 3
    assert select(catalog).equals(catalog)


def test_select_per_genre_exact_when_possible() -> None:
    genres = [["A"]] * 10 + [["B"]] * 3 + [["C", "A"]] * 2
    catalog = make_catalog({f"tt{i:07d}": None for i in range(len(genres))}).assign(genres=genres)
    picked = select(catalog, sample="per-genre:4")
    counts = pd.Series([g for gs in picked["genres"] for g in gs]).value_counts()
    assert counts.to_dict() == {"A": 4, "B": 3, "C": 2}


def test_select_per_genre_on_sample_catalogue() -> None:
    csv = pd.read_csv(SAMPLE_IMAGES.parent / "MovieGenre.csv")
    catalog = pd.DataFrame(
        {"id": csv["imdbId"].map(lambda i: f"tt{i:07d}"), "genres": csv["Genre"].str.split("|")}
    )
    available = pd.Series([g for gs in catalog["genres"] for g in gs]).value_counts()
    picked = select(catalog, sample="per-genre:5")
    counts = pd.Series([g for gs in picked["genres"] for g in gs]).value_counts()
    for genre, n in available.items():
        assert counts[genre] >= min(5, n), genre
    assert len(picked) <= 5 * len(available)


@pytest.mark.parametrize(
    "spec", ["per-genre", "per-genre:0", "per-genre:x", "random:-3", "first:10", "", "random:1.5"]
)
def test_select_bad_spec(spec: str) -> None:
    catalog = make_catalog({"tt0000001": None})
    with pytest.raises(ValueError, match="per-genre:K"):
        select(catalog, sample=spec)


def test_select_bad_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        select(make_catalog({"tt0000001": None}), limit=-1)


@pytest.mark.parametrize("bad", [{"concurrency": 0}, {"retries": -1}, {"timeout": 0}])
def test_config_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FetchConfig(**bad)


# --------------------------------------------------------------------------- faults

# The test server is on loopback, which the fetcher refuses unless allowed.
CONFIG = FetchConfig(
    concurrency=8, retries=2, timeout=0.5, max_bytes=200_000, backoff=0.05, max_retry_after=1.5,
    allow_private_hosts=True,
)


EXPECTED = {  # path -> (status, attempts)
    "/ok.jpg": ("ok", 1),
    "/404.jpg": ("http_404", 1),
    "/403.jpg": ("http_403", 1),
    "/500-then-200.jpg": ("ok", 2),
    "/500-always.jpg": ("http_503", 3),
    "/429-then-200.jpg": ("ok", 2),
    "/429-capped.jpg": ("ok", 2),
    "/slow.jpg": ("timeout", 3),
    "/short-body.jpg": ("truncated", 3),
    "/cut.jpg": ("truncated", 1),
    "/html-as-jpeg.jpg": ("not_image", 1),
    "/text-html.jpg": ("not_image", 1),
    "/big-declared.jpg": ("too_large", 1),
    "/big-streamed.jpg": ("too_large", 1),
    "/bomb.png": ("bomb", 1),
    "/loop": ("too_many_redirects", 1),
    "/redirect": ("ok", 1),
    "/to-ftp": ("invalid_url", 1),
    V1: ("ok", 2),
    V1_HTML: ("ok", 3),
}


@dataclass
class FaultRun:
    """The result of one fetch over every fault case."""

    server: FaultServer
    out_dir: Path
    urls: dict[str, str | float | None]  # the catalogue: id -> url
    manifest: pd.DataFrame  # indexed by imdbId
    summary: FetchSummary

    def row(self, path: str) -> pd.Series:
        """The manifest row of the movie whose URL is ``path`` on the server."""
        movie_id = next(i for i, url in self.urls.items() if url == self.server.url(path))
        return self.manifest.loc[movie_id]


@pytest.fixture(scope="module")
def fault_run(
    posters: list[bytes], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultRun]:
    """Fetch one movie per case in EXPECTED plus URL problems, all in one run."""
    jpeg = posters[0]
    ok = Reply(body=jpeg)
    routes = {
        "/ok.jpg": [ok],
        "/404.jpg": [Reply(404, b"gone", "text/html")],
        "/403.jpg": [Reply(403, b"no", "text/html")],
        "/500-then-200.jpg": [Reply(500, b"oops", "text/plain"), ok],
        "/500-always.jpg": [Reply(503, b"oops", "text/plain")],
        "/429-then-200.jpg": [Reply(429, b"slow down", "text/plain", {"Retry-After": "1"}), ok],
        "/429-capped.jpg": [Reply(429, b"", "text/plain", {"Retry-After": "3600"}), ok],
        "/slow.jpg": [Reply(body=jpeg, delay=1.5)],
        "/short-body.jpg": [Reply(body=jpeg[:2000], declared_length=len(jpeg))],
        "/cut.jpg": [Reply(body=jpeg[: len(jpeg) // 2])],
        "/html-as-jpeg.jpg": [Reply(body=b"<html><body>captcha</body></html>")],
        "/text-html.jpg": [Reply(body=b"<html></html>", content_type="text/html")],
        "/big-declared.jpg": [Reply(body=os.urandom(300_000))],
        "/big-streamed.jpg": [Reply(body=os.urandom(300_000), send_length=False)],
        "/bomb.png": [Reply(body=bomb_png(), content_type="image/png")],
        "/loop": [Reply(302, headers={"Location": "/loop"})],
        "/redirect": [Reply(301, headers={"Location": "/ok.jpg"})],
        "/to-ftp": [Reply(302, headers={"Location": "ftp://127.0.0.1/x.jpg"})],
        V1: [Reply(404, b"", "text/html")],
        V1_FULL: [ok],
        V1_HTML: [Reply(body=b"<html>", content_type="text/html")],
        # V1_HTML's _V1_.jpg variant is unknown (404), its _V1_SX300.jpg variant works:
        "/images/M/MV5Bhtml@._V1_SX300.jpg": [ok],
    }
    with FaultServer(routes) as server:
        # One movie per case in EXPECTED (the fallback-only paths are not movies).
        urls = {f"tt{i:07d}": server.url(path) for i, path in enumerate(EXPECTED, start=1)}
        urls |= {
            "tt9000001": None,
            "tt9000002": "ftp://127.0.0.1/poster.jpg",
            "tt9000003": "not a url",
            "tt9000004": f"http://127.0.0.1:{closed_port()}/refused.jpg",
            "tt9000005": float("nan"),
            "../evil": server.url("/ok.jpg"),
        }
        out_dir = tmp_path_factory.mktemp("faults")
        summary = fetch_posters(make_catalog(urls), out_dir, CONFIG, progress=False)
        manifest = read_manifest(out_dir).set_index("imdbId")
        yield FaultRun(server, out_dir, urls, manifest, summary)


@pytest.mark.parametrize("path", list(EXPECTED))
def test_fault_status(fault_run: FaultRun, path: str) -> None:
    row = fault_run.row(path)
    status, attempts = EXPECTED[path]
    assert (row["status"], row["attempts"]) == (status, attempts)
    poster = fault_run.out_dir / f"{row.name}.jpg"
    if status == "ok":
        assert loads(poster) and row["bytes"] == poster.stat().st_size
    else:
        assert not poster.exists()


def test_fault_server_hits(fault_run: FaultRun) -> None:
    server = fault_run.server
    assert server.hits["/404.jpg"] == 1  # 4xx: no retry
    assert server.hits["/500-always.jpg"] == 3  # 1 + retries
    assert server.hits["/429-then-200.jpg"] == 2
    assert server.hits[V1] == 1 and server.hits[V1_FULL] == 1  # variant fallback
    assert server.hits["/loop"] == 1 + http_module.MAX_REDIRECTS


def test_retry_after_is_honoured_and_capped(fault_run: FaultRun) -> None:
    def gap(path: str) -> float:
        first, second = fault_run.server.hit_times[path]
        return second - first

    # Upper bounds leave room for a busy machine.
    assert 1.0 <= gap("/429-then-200.jpg") < 2.0  # Retry-After: 1
    assert 1.5 <= gap("/429-capped.jpg") < 3.0  # Retry-After: 3600, capped at 1.5
    assert gap("/500-then-200.jpg") < 0.9  # plain backoff (base 0.05 s)


def test_retry_after_parsing() -> None:
    parse = http_module._retry_after_seconds
    assert parse("7", 60.0) == 7.0 and parse("600", 60.0) == 60.0 and parse("-3", 60.0) == 0.0
    assert parse(None, 60.0) is None and parse("soon", 60.0) is None
    in_30s = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25.0 <= parse(in_30s, 60.0) <= 30.0


def test_fault_final_urls(fault_run: FaultRun) -> None:
    server = fault_run.server
    assert fault_run.row("/redirect")["final_url"] == server.url("/ok.jpg")
    assert fault_run.row(V1)["final_url"] == server.url(V1_FULL)
    assert fault_run.row(V1_HTML)["final_url"] == server.url("/images/M/MV5Bhtml@._V1_SX300.jpg")


def test_url_problems_and_manifest(fault_run: FaultRun) -> None:
    out_dir, manifest, summary = fault_run.out_dir, fault_run.manifest, fault_run.summary
    assert manifest.loc["tt9000001", "status"] == "no_url"
    assert manifest.loc["tt9000002", "status"] == "invalid_url"
    assert manifest.loc["tt9000003", "status"] == "invalid_url"
    assert manifest.loc["tt9000004", "status"] == "connection_error"
    assert manifest.loc["tt9000004", "attempts"] == 3
    assert manifest.loc["tt9000005", "status"] == "no_url"
    assert manifest.loc["../evil", "status"] == "invalid_id"
    assert not (out_dir.parent / "evil.jpg").exists()
    assert tuple(read_manifest(out_dir).columns) == MANIFEST_COLUMNS
    assert list(manifest.index) == list(fault_run.urls)  # one row per movie, catalogue order
    assert sum(summary.counts.values()) == len(fault_run.urls)
    assert summary.counts["ok"] == sum(s == "ok" for s, _ in EXPECTED.values())
    assert summary.manifest == out_dir / "manifest.csv"


def test_no_partial_files_left(fault_run: FaultRun) -> None:
    out_dir, manifest = fault_run.out_dir, fault_run.manifest
    assert not list(out_dir.glob("*.part")) and not list(out_dir.glob(".*"))
    on_disk = {p.stem for p in out_dir.glob("*.jpg")}
    assert on_disk == set(manifest.index[manifest["status"] == "ok"])


# --------------------------------------------------------------------------- resume


def test_rerun_uses_cache_and_replaces_bad_files(posters: list[bytes], tmp_path: Path) -> None:
    routes = {f"/p{i}.jpg": [Reply(body=posters[i])] for i in range(5)}
    with FaultServer(routes) as server:
        catalog = make_catalog({f"tt{i:07d}": server.url(f"/p{i}.jpg") for i in range(5)})
        assert fetch_posters(catalog, tmp_path, CONFIG, progress=True).counts == {"ok": 5}
        (tmp_path / "tt0000003.jpg").write_bytes(posters[3][:500])  # corrupted since
        (tmp_path / ".tt0000004.jpg.part").write_bytes(b"stale")  # left by a killed run
        summary = fetch_posters(catalog, tmp_path, CONFIG, progress=False)
    assert summary.counts == {"cached": 4, "ok": 1}
    assert summary.n_ok == 5 and summary.n_failed == 0
    assert server.hits["/p3.jpg"] == 2 and server.hits["/p0.jpg"] == 1
    assert not list(tmp_path.glob(".*"))
    assert all(validate_image(tmp_path / f"tt{i:07d}.jpg", 40_000_000) == "ok" for i in range(5))


def test_works_inside_a_running_event_loop(posters: list[bytes], tmp_path: Path) -> None:
    """From a notebook (an event loop already running) the fetch runs in a helper thread."""
    with FaultServer({"/a.jpg": [Reply(body=posters[0])]}) as server:
        catalog = make_catalog({"tt0000001": server.url("/a.jpg")})

        async def main() -> FetchSummary:
            return fetch_posters(catalog, tmp_path, CONFIG, progress=False)

        assert asyncio.run(main()).counts == {"ok": 1}


def test_empty_catalogue_writes_an_empty_manifest(tmp_path: Path) -> None:
    summary = fetch_posters(make_catalog({}), tmp_path / "new", CONFIG, progress=False)
    assert summary.counts == {} and read_manifest(tmp_path / "new").empty


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import pandas as pd
    from posterlens.data.fetch import FetchConfig, fetch_posters

    base, out_dir, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    ids = [f"tt{i:07d}" for i in range(n)]
    catalog = pd.DataFrame({"id": ids, "url": [f"{base}/p/{i}.jpg" for i in range(n)]})
    config = FetchConfig(concurrency=4, manifest_every=10, allow_private_hosts=True)
    fetch_posters(catalog, out_dir, config, progress=False)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_run_then_resume(posters: list[bytes], tmp_path: Path) -> None:
    n = 120
    # Each reply pauses mid-body, so the kill lands while downloads are in flight.
    routes = {
        f"/p/{i}.jpg": [Reply(body=posters[i], delay=0.02, split_delay=0.08)] for i in range(n)
    }
    ids = [f"tt{i:07d}" for i in range(n)]
    src_dir = Path(fetch_module.__file__).resolve().parents[2]
    pythonpath = [str(src_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    with FaultServer(routes) as server:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, server.base_url, str(tmp_path), str(n)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while len(list(tmp_path.glob("*.jpg"))) < 25:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "child made no progress"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stderr.close()
        assert child.returncode == -signal.SIGKILL

        # Whatever the kill left under a final name is a complete poster.
        done = sorted(tmp_path.glob("*.jpg"))
        assert 25 <= len(done) < n
        assert all(loads(p) for p in done)
        early = read_manifest(tmp_path)  # the periodic manifest is usable
        assert len(early) >= 10 and set(early["status"]) == {"ok"}

        summary = fetch_posters(
            make_catalog(dict(zip(ids, [server.url(f"/p/{i}.jpg") for i in range(n)]))),
            tmp_path,
            FetchConfig(concurrency=8, timeout=5.0, allow_private_hosts=True),
            progress=False,
        )

    assert summary.counts["cached"] >= len(done)
    assert summary.n_ok == n
    manifest = read_manifest(tmp_path)
    assert list(manifest["imdbId"]) == ids
    assert set(manifest["status"]) <= {"ok", "cached"}
    assert not list(tmp_path.glob(".*"))  # no .part, no manifest temp
    for i, movie_id in enumerate(ids):
        path = tmp_path / f"{movie_id}.jpg"
        assert loads(path) and path.read_bytes() == posters[i]


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"concurrency": 0}, "FetchConfig: concurrency: 0 is out of range [1, 1,024]"),
        ({"retries": -1}, "FetchConfig: retries: -1 is out of range [0, 100]"),
        ({"timeout": float("nan")}, "FetchConfig: timeout: nan is out of range [0.001, 3,600]"),
        ({"max_bytes": 0}, "FetchConfig: max_bytes: 0 is out of range [1, 1,073,741,824]"),
        ({"manifest_every": "10"}, "FetchConfig: manifest_every: expected a whole number, got '10'"),
    ],
)
def test_config_errors_name_the_field(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        FetchConfig(**bad)


@pytest.mark.parametrize(
    "address, problem",
    [
        ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"), ("0.0.0.0", "unspecified"), ("10.1.2.3", "private"),
        ("192.168.0.1", "private"), ("fc00::1", "private"), ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"), ("224.0.0.1", "multicast"), ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-global"), ("93.184.215.14", None), ("2606:4700::1111", None),
    ],
)
def test_address_problem(address: str, problem: str | None) -> None:
    assert http_module.address_problem(address) == problem


PUBLIC = FetchConfig(concurrency=2, retries=2, timeout=2.0, backoff=0.05)  # allow_private_hosts off


def test_private_hosts_are_refused_per_poster(
    posters: list[bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with FaultServer({"/ok.jpg": [Reply(body=posters[0])]}) as server:
        port = server.server_address[1]
        urls = {"tt0000001": server.url("/ok.jpg"), "tt0000002": f"http://localhost:{port}/ok.jpg"}
        summary = fetch_posters(make_catalog(urls), tmp_path, PUBLIC, progress=False)
    assert server.hits["/ok.jpg"] == 0  # never connected
    manifest = read_manifest(tmp_path).set_index("imdbId")
    assert list(manifest["status"]) == ["blocked_host"] * 2 and list(manifest["attempts"]) == [1, 1]
    assert summary.counts == {"blocked_host": 2} and not list(tmp_path.glob("*.jpg"))
    assert "127.0.0.1 is a loopback address" in caplog.text and "--allow-private-hosts" in caplog.text


@pytest.fixture
def pretend_public(monkeypatch: pytest.MonkeyPatch) -> str:
    """Treat 127.0.0.2 as a public internet address (a stand-in for a real poster host)."""
    if sys.platform != "linux":
        pytest.skip("binding 127.0.0.2 needs Linux")
    real = http_module.address_problem
    monkeypatch.setattr(http_module, "address_problem", lambda a: None if a == "127.0.0.2" else real(a))
    return "127.0.0.2"


def test_redirect_to_loopback_is_refused(posters: list[bytes], tmp_path: Path, pretend_public: str) -> None:
    with FaultServer({"/ok.jpg": [Reply(body=posters[0])]}) as inside:
        target = inside.url("/ok.jpg")  # 127.0.0.1, another port
        with FaultServer({"/r.jpg": [Reply(302, headers={"Location": target})]}, pretend_public) as outside:
            catalog = make_catalog({"tt0000001": outside.url("/r.jpg")})
            summary = fetch_posters(catalog, tmp_path, PUBLIC, progress=False)
    assert summary.counts == {"blocked_host": 1}
    assert outside.hits["/r.jpg"] == 1 and inside.hits["/ok.jpg"] == 0
    row = read_manifest(tmp_path).iloc[0]
    assert (row["status"], row["final_url"]) == ("blocked_host", target)


def test_connects_to_the_address_it_checked(
    posters: list[bytes], tmp_path: Path, pretend_public: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: a second lookup would say loopback, but there is no second lookup."""
    answers = iter([[pretend_public]])

    async def rebinding_resolver(host: str, port: int) -> list[str]:
        assert host == "posters.test"
        return next(answers, ["127.0.0.1"])

    monkeypatch.setattr(http_module, "_resolve", rebinding_resolver)
    with FaultServer({"/a.jpg": [Reply(body=posters[0])]}, pretend_public) as server:
        url = f"http://posters.test:{server.server_address[1]}/a.jpg"
        summary = fetch_posters(make_catalog({"tt0000001": url}), tmp_path, PUBLIC, progress=False)
    assert summary.counts == {"ok": 1} and server.hits["/a.jpg"] == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compression_bomb_counts_decoded_bytes(tmp_path: Path, encoding: str) -> None:
    packed = gzip.compress(bytes(30_000_000)) if encoding == "gzip" else zlib.compress(bytes(30_000_000))
    assert len(packed) < CONFIG.max_bytes  # small on the wire, 30 MB decoded
    reply = Reply(body=packed, headers={"Content-Encoding": encoding})
    with FaultServer({"/bomb.jpg": [reply]}) as server:
        start = time.perf_counter()
        summary = fetch_posters(make_catalog({"tt0000001": server.url("/bomb.jpg")}), tmp_path, CONFIG, progress=False)
    assert summary.counts == {"too_large": 1} and time.perf_counter() - start < 5
    assert read_manifest(tmp_path)["bytes"][0] == CONFIG.max_bytes
    assert not list(tmp_path.glob("*.jpg")) and not list(tmp_path.glob(".*"))


def test_disk_full_stops_with_one_error_and_no_part_files(
    posters: list[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Path, data: bytes) -> int:
        self.open("wb").write(data[:100])  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    routes = {f"/p{i}.jpg": [Reply(body=posters[i])] for i in range(6)}
    with FaultServer(routes) as server:
        catalog = make_catalog({f"tt{i:07d}": server.url(f"/p{i}.jpg") for i in range(6)})
        with pytest.raises(OutputError, match=r"tt\d{7}.jpg: cannot write \(No space left on device\)"):
            fetch_posters(catalog, tmp_path, CONFIG, progress=False)
    assert not list(tmp_path.glob(".*")) and not list(tmp_path.glob("*.jpg"))
    assert (tmp_path / "manifest.csv").exists()


def test_manifest_cells_cannot_be_formulas(tmp_path: Path) -> None:
    catalog = make_catalog({"=cmd|' /C calc'!A0": "http://x/a.jpg", "tt0000001": '=HYPERLINK("http://evil")'})
    fetch_posters(catalog, tmp_path, PUBLIC, progress=False)
    manifest = read_manifest(tmp_path)
    assert list(manifest["imdbId"]) == ["'=cmd|' /C calc'!A0", "tt0000001"]
    assert list(manifest["status"]) == ["invalid_id", "invalid_url"]
    assert manifest["final_url"][1] == "'=HYPERLINK(\"http://evil\")"
