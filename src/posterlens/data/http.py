"""One guarded HTTP GET of an image: public hosts only, size capped, every failure a status.

``fetch`` runs many of these concurrently for a catalogue; the web server runs one for
``--allow-url-fetch`` (``download``). Every connection (the first request and each redirect
hop) resolves the host, refuses it if any address is loopback, private, link-local,
multicast, reserved or otherwise not global, and connects to the address it checked (no
second DNS answer, so no DNS rebinding); ``allow_private_hosts`` opens loopback and private
addresses, never link-local ones (169.254.169.254 is the cloud metadata service).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import socket
import ssl
import time
import zlib
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

if TYPE_CHECKING:
    from posterlens.data.fetch_config import FetchConfig

__all__ = ["HEADERS", "MAX_REDIRECTS", "Attempt", "BlockedHostError", "address_problem", "public_addresses",
           "client", "get", "get_with_retries", "download", "is_image_type"]

log = logging.getLogger(__name__)

HEADERS = {
    "User-Agent": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0 Safari/537.36"
    ),
    "Accept": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
    "Accept-Language": "en-US,en;q=0.9",
    "Accept-Encoding": "gzip, deflate",  # the encodings ``_read_body`` decodes itself, with a cap
}
MAX_REDIRECTS = 5
_CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True)
class Attempt:
    """Outcome of one HTTP request; ``status == "downloaded"`` comes with the ``body``."""

    status: str
    url: str
    nbytes: int = 0
    retry: bool = False
    retry_after: float | None = None
    body: bytes = field(default=b"", repr=False)


def is_image_type(content_type: str) -> bool:
    """Accept image/*; a missing or generic type is left for Pillow to judge."""
    mime = content_type.split(";")[0].strip().lower()
    return mime in ("", "application/octet-stream") or mime.startswith("image/")


# --------------------------------------------------------------------------- public hosts only


class BlockedHostError(Exception):
    """A host is not on the public internet (and ``allow_private_hosts`` is off)."""

    def __init__(self, message: str, url: str = ""):
        super().__init__(message)
        self.url = url  # the request (first or redirect hop) that was refused


def address_problem(address: str) -> str | None:
    """Why an IP address is not a public internet address (``"loopback"``...), or None.

    IPv4 addresses inside IPv6 (``::ffff:127.0.0.1``, 6to4 ``2002:7f00:1::``) are judged as IPv4.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ip.ipv4_mapped or ip.sixtofour or ip
    for kind in ("loopback", "unspecified", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-global"


async def _resolve(host: str, port: int) -> list[str]:
    """The addresses of ``host`` (in resolver order, no duplicates)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# kinds of address ``allow_private_hosts`` opens (local test servers, a mirror on the LAN); link-local
# (169.254.0.0/16: the cloud metadata service), multicast, unspecified and reserved stay closed
PRIVATE_KINDS = frozenset({"loopback", "private", "non-global"})


async def public_addresses(host: str, port: int, allowed: frozenset[str] = frozenset()) -> list[str]:
    """Resolve ``host``; raise ``BlockedHostError`` if ANY of its addresses is not public (or of a
    kind in ``allowed``)."""
    try:
        addresses = await _resolve(host, port)
    except (OSError, UnicodeError) as err:  # socket.gaierror is an OSError
        raise httpcore.ConnectError(f"cannot resolve {host}: {err}") from None
    for address in addresses:
        problem = address_problem(address)
        if problem and problem not in allowed:
            shown = host if host == address else f"{host} ({address})"
            raise BlockedHostError(f"{shown} is a {problem} address, not a public internet host")
    return addresses


class _PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that connects only to the public addresses it resolved."""

    def __init__(self, allowed: frozenset[str] = frozenset()) -> None:
        self._inner = httpcore.AnyIOBackend()
        self.allowed = allowed

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None
                          ) -> httpcore.AsyncNetworkStream:
        error: Exception | None = None
        for address in await public_addresses(host, port, self.allowed):  # connect to what was checked
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as err:  # e.g. an IPv6 address without a route
                error = err
        raise error or httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise BlockedHostError(f"unix socket {path} is not a public internet host")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PublicOnlyTransport(httpx.AsyncHTTPTransport):
    """``AsyncHTTPTransport`` whose every connection goes through ``_PublicOnlyBackend``.

    TLS still verifies the certificate against the host name. httpx 0.28 has no public
    argument for the network backend, hence the replaced pool (tests/test_fetch.py checks
    that a redirect to loopback is refused, so a change in httpx cannot go unnoticed).
    """

    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx.Limits, allowed: frozenset[str] = frozenset()) -> None:
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PublicOnlyBackend(allowed),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except BlockedHostError as err:  # name the hop: it may be a redirect target
            raise BlockedHostError(f"{request.url}: {err}", str(request.url)) from None


# --------------------------------------------------------------------------- HTTP


def _retry_after_seconds(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def _backoff_delay(base: float, attempt: int, cap: float, rng: random.Random) -> float:
    """Exponential backoff with 'equal jitter': half fixed, half random."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + rng.uniform(0, delay / 2)


def _http_failure(response: httpx.Response, config: FetchConfig) -> Attempt:
    code = response.status_code
    if not (code == 429 or code >= 500):  # other 4xx (and odd 3xx): retrying will not help
        return Attempt(f"http_{code}", str(response.url))
    wait = _retry_after_seconds(response.headers.get("retry-after"), config.max_retry_after)
    return Attempt(f"http_{code}", str(response.url), retry=True, retry_after=wait)


class UnsupportedEncoding(Exception):
    """A ``Content-Encoding`` this client did not ask for (it sends ``ACCEPT_ENCODING``)."""


def _decoder(response: httpx.Response):
    """A zlib decompressor for the response's ``Content-Encoding`` (None: the body is as sent)."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or zlib header, detected
    raise UnsupportedEncoding(encoding)


async def _read_body(response: httpx.Response, max_bytes: int) -> bytes | None:
    """The response body, decompressed here, or ``None`` as soon as it passes ``max_bytes``.

    The raw bytes are inflated at most ``max_bytes + 1`` at a time (``decompress``'s
    ``max_length``), so a compression bomb is cut at the cap: memory stays within ``max_bytes``
    and a raw chunk per download, not what the bomb would inflate to.
    """
    decoder, body = _decoder(response), bytearray()
    try:
        async for chunk in response.aiter_raw(_CHUNK_SIZE):
            while chunk:
                if decoder is None:
                    body += chunk
                    chunk = b""
                else:
                    body += decoder.decompress(chunk, max_bytes + 1 - len(body))
                    chunk = decoder.unconsumed_tail
                if len(body) > max_bytes:
                    return None
        if decoder is not None:
            body += decoder.flush()  # all input is consumed: what is left is small
    except zlib.error as err:
        raise httpx.DecodingError(f"corrupt compressed body: {err}") from None
    if len(body) > max_bytes:
        return None
    if decoder is not None and not decoder.eof:
        raise httpx.RemoteProtocolError("the compressed body ends before its end")
    return bytes(body)


async def get(client: httpx.AsyncClient, url: str, config: FetchConfig) -> Attempt:
    """One GET of ``url``, with every failure mapped to a status."""
    try:
        async with asyncio.timeout(config.timeout):
            async with client.stream("GET", url) as response:
                final_url = str(response.url)
                if not response.is_success:
                    return _http_failure(response, config)
                if not is_image_type(response.headers.get("content-type", "")):
                    return Attempt("not_image", final_url)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > config.max_bytes:
                    return Attempt("too_large", final_url, int(declared))
                try:
                    body = await _read_body(response, config.max_bytes)
                except UnsupportedEncoding:  # one the request did not accept
                    return Attempt("unsupported_encoding", final_url)
                except httpx.TimeoutException:
                    raise
                except httpx.TransportError as err:  # e.g. fewer bytes than Content-Length
                    log.debug("body of %s cut short: %s", url, err)
                    return Attempt("truncated", final_url, retry=True)
                if body is None:
                    return Attempt("too_large", final_url, config.max_bytes)
                return Attempt("downloaded", final_url, len(body), body=body)
    except BlockedHostError as err:
        log.warning("%s (FetchConfig.allow_private_hosts / --allow-private-hosts allows it)", err)
        return Attempt("blocked_host", err.url or url)
    except (TimeoutError, httpx.TimeoutException):
        return Attempt("timeout", url, retry=True)
    except httpx.TooManyRedirects:
        return Attempt("too_many_redirects", url)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL):  # e.g. a redirect to ftp://
        return Attempt("invalid_url", url)
    except httpx.TransportError as err:
        log.debug("connection error for %s: %s", url, err)
        return Attempt("connection_error", url, retry=True)
    except httpx.HTTPError as err:
        log.debug("HTTP error for %s: %s", url, err)
        return Attempt("http_error", url)


async def get_with_retries(
    client: httpx.AsyncClient, url: str, config: FetchConfig, rng: random.Random
) -> tuple[Attempt, int]:
    """Download ``url``, retrying transient failures; returns the last outcome and attempts."""
    attempts = 0
    while True:
        attempts += 1
        outcome = await get(client, url, config)
        if not outcome.retry or attempts > config.retries:
            return outcome, attempts
        delay = outcome.retry_after
        if delay is None:
            delay = _backoff_delay(config.backoff, attempts, config.max_retry_after, rng)
        log.debug("%s: %s, retry %d in %.2fs", url, outcome.status, attempts, delay)
        await asyncio.sleep(delay)


def client(ssl_context: ssl.SSLContext, config: FetchConfig) -> httpx.AsyncClient:
    """A client holding one keep-alive connection (re-opened when the host changes).

    It connects to public internet addresses only; ``config.allow_private_hosts`` adds loopback and
    private ones (``PRIVATE_KINDS``), never link-local ones such as the cloud metadata service.
    Environment proxies are never used: a proxy would resolve the hosts itself.
    """
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    allowed = PRIVATE_KINDS if config.allow_private_hosts else frozenset()
    transport = _PublicOnlyTransport(ssl_context, limits, allowed)
    return httpx.AsyncClient(
        headers=HEADERS,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=config.timeout,
        limits=limits,
        verify=ssl_context,
        transport=transport,
    )


async def download(url: str, config: FetchConfig) -> Attempt:
    """One image URL with its own client (no retries beyond ``config.retries``): the web server's
    ``--allow-url-fetch``. ``status == "downloaded"`` comes with the body."""
    async with client(httpx.create_ssl_context(), config) as session:
        attempt, _ = await get_with_retries(session, url, config, random.Random())
    return attempt
