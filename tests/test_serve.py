"""The web API: predictions, limits on uploads, concurrent requests, training posters."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import posterlens
from posterlens.app import serve


@pytest.fixture(scope="module")
def predictor(trained_model, shared_cache):
    return posterlens.load(trained_model, shared_cache)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(serve.create_app(predictor, max_upload_bytes=300_000)) as client:
        yield client


@pytest.fixture(scope="module")
def poster(sample_dir) -> bytes:
    return (sample_dir / "images" / "tt0085154.jpg").read_bytes()


def upload(client, data: bytes, name: str = "poster.jpg", path: str = "/api/predict", **form):
    return client.post(path, files={"image": (name, data, "application/octet-stream")}, data=form)


def test_predict_gives_genres_score_and_similar_movies(client, predictor, poster):
    response = upload(client, poster)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = predictor.predict(poster, warn=False).iloc[0]
    assert body["genres"] == list(expected["genres"])
    assert body["probabilities"]["Drama"] == pytest.approx(expected["Drama"], abs=1e-4)
    assert body["score"] == pytest.approx(expected["score"], abs=0.01)
    assert body["score_low"] < body["score"] < body["score_high"] and body["interval"] == 0.8
    assert body["genre_confidence"] == pytest.approx(expected["genre_confidence"], abs=1e-4)
    assert body["domain_score"] == pytest.approx(expected["domain_score"], abs=1e-4)
    assert body["in_domain"] is bool(expected["in_domain"])
    assert len(body["similar"]) == serve.SIMILAR
    assert "tt0085154" not in [m["id"] for m in body["similar"]]  # a training poster never matches itself
    assert all(m["has_poster"] for m in body["similar"])
    first = body["similar"][0]
    thumb = client.get(f"/api/poster/{first['id']}")  # the thumbnail the model carries
    assert thumb.headers["content-type"] == "image/webp" and Image.open(io.BytesIO(thumb.content)).size == (48, 72)


@pytest.mark.parametrize("data, name, status, code, words", [
    (b"this is not a poster", "notes.txt", 415, "not_an_image", "not an image"),
    (bytes(400_000), "big.jpg", 413, "too_large", "300,000 byte limit"),
])
def test_bad_uploads_get_a_clear_error(client, data, name, status, code, words):
    response = upload(client, data, name)
    assert response.status_code == status
    assert response.json()["error"] == code and words in response.json()["detail"]


def test_decompression_bomb_is_refused_from_its_header(client):
    buffer = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buffer, "PNG")  # 36 Mpx in a few kB
    response = upload(client, buffer.getvalue(), "bomb.png")
    assert response.status_code == 413
    assert response.json()["error"] == "too_many_pixels"
    assert "6000x6000" in response.json()["detail"]


def test_size_cap_applies_while_streaming(client):
    """No Content-Length (chunked): the cap stops the read, not a check afterwards."""
    def body():
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n\r\n"
        for _ in range(100):
            yield bytes(64_000)

    response = client.post("/api/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413 and response.json()["error"] == "too_large"


@pytest.mark.parametrize("request_kwargs, status, code", [
    ({"data": {"other": "x"}, "files": {"x": ("a", b"a")}}, 400, "no_image"),
    ({"json": {"image": "x"}}, 415, "not_multipart"),
])
def test_malformed_requests(client, request_kwargs, status, code):
    response = client.post("/api/predict", **request_kwargs)
    assert (response.status_code, response.json()["error"]) == (status, code)


def test_url_fetching_is_off_unless_allowed_and_then_public_hosts_only(client, predictor):
    assert client.post("/api/predict", data={"url": "http://127.0.0.1:9/x.jpg"},
                       files={"x": ("a", b"a")}).json()["error"] == "no_image"
    with TestClient(serve.create_app(predictor, allow_url_fetch=True)) as fetching:
        response = fetching.post("/api/predict", data={"url": "http://127.0.0.1:9/x.jpg"}, files={"x": ("a", b"a")})
    assert response.status_code == 400 and response.json()["error"] == "fetch_blocked_host"


def test_health_page_and_openapi(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and "Drama" in health["genres"] and health["allow_url_fetch"] is False
    page = client.get("/")
    assert "/static/app.js" in page.text and "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.split("<footer>")[0]  # nothing loaded from elsewhere
    assert {"/api/predict", "/api/explain", "/api/health"} <= set(client.get("/openapi.json").json()["paths"])
    assert client.get("/api/poster/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_explain_endpoint(client, poster):
    response = upload(client, poster, path="/api/explain", genres="Comedy")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["genres"] == ["Comedy"] and body["overlays"]["Comedy"].startswith("data:image/png;base64,")
    assert upload(client, poster, path="/api/explain", genres="Opera").json()["error"] == "bad_genre"


def test_concurrent_requests_on_a_real_server(predictor, poster):
    app = serve.create_app(predictor)
    with serve.background(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        def one(i: int) -> int:
            files = {"image": (f"p{i}.jpg", poster, "image/jpeg")}
            return http.post("/api/predict", files=files).status_code

        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(one, range(20)))
    assert codes == [200] * 20


def test_a_client_that_hangs_up_after_a_413_leaves_no_error(predictor, caplog):
    """Upload past the cap without Content-Length, then hang up: the server logs no error and stays up."""
    import logging
    import socket
    from urllib.parse import urlparse

    app = serve.create_app(predictor, max_upload_bytes=100_000)
    with caplog.at_level(logging.WARNING), serve.background(app) as url:
        host, port = urlparse(url).hostname, urlparse(url).port
        for hang_up_before_reading in (True, False):
            with socket.create_connection((host, port), timeout=30) as raw:
                raw.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
                part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n\r\n'
                raw.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                chunk = bytes(64_000)
                for _ in range(4):
                    raw.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                if not hang_up_before_reading:
                    assert b" 413 " in raw.recv(4096).split(b"\r\n")[0] + b" "
        assert httpx.get(f"{url}/api/health", timeout=30).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
