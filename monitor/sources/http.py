"""Fetching a status page's URLs safely: capped bodies (compressed and inflated), only encodings we decode,
few redirects and only on the page's own host, conditional GET with stored validators, Retry-After
honoured, a deadline per request, one-line errors."""
from __future__ import annotations

import asyncio
import email.utils
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx

from monitor import __version__
from monitor.sources.common import one_line

USER_AGENT = f"openai-status-monitor/{__version__} (status page poller; +https://pypi.org/project/openai-status-monitor/)"


class FetchError(Exception):
    """A source could not be fetched or was not what we expected (one-line message)."""

    def __init__(self, message: str, retry_after: datetime | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Fetched:
    status: int               # 200 or 304
    body: bytes
    content_type: str
    etag: str | None
    last_modified: str | None


MAX_REDIRECTS = 5


class _OnFirstRequest(httpx.AsyncBaseTransport):
    """httpx's own transport, built at the first request through it: building one for https loads the
    certificate store (about 40 ms), which a poll of http:// pages, or one that asks nothing, never needs."""

    def __init__(self, **options):
        self._options, self._transport = options, None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            self._transport = httpx.AsyncHTTPTransport(**self._options)
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()


def client(timeout: float = 10.0) -> httpx.AsyncClient:
    """The shared client. It follows no redirect itself: `fetch` does, on the page's own host only. https://
    goes through a verifying transport (certificates checked, as httpx does by default); http:// through one
    that has no TLS to verify (a redirect to https:// is routed to the verifying one)."""
    return httpx.AsyncClient(
        follow_redirects=False, max_redirects=MAX_REDIRECTS,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip"},
        trust_env=False,
        transport=_OnFirstRequest(), mounts={"http://": _OnFirstRequest(verify=False)},
    )


MAX_RETRY_AFTER = timedelta(days=1)   # a page may ask us to wait at most this long
MAX_HEADER_CHARS = 1024               # longer validators or content types are not kept (not ours to store)


def retry_after(value: str | None, now: datetime) -> datetime | None:
    """Retry-After as seconds or an HTTP date, clamped to [now, now + MAX_RETRY_AFTER]; None when absent or
    unreadable. Never raises, whatever the page sends (99999999999999 seconds is one day)."""
    if not value or len(value) > 200:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return now + min(MAX_RETRY_AFTER, timedelta(seconds=min(int(value), 10**9)))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    try:
        return max(now, min(when, now + MAX_RETRY_AFTER))
    except OverflowError:
        return None


def header(r: httpx.Response, name: str) -> str | None:
    """A response header as sent, or None when absent or longer than MAX_HEADER_CHARS."""
    value = r.headers.get(name)
    return value if value is not None and len(value) <= MAX_HEADER_CHARS else None


def _mb(n: int) -> str:
    return f"{n / (1 << 20):g} MB"


def same_site(origin: httpx.URL, target: httpx.URL) -> bool:
    """A redirect may change the path, or move http to https on the same host; never the host or the port."""
    if target.host != origin.host:
        return False
    if target.scheme == origin.scheme:
        return target.port == origin.port
    return origin.scheme == "http" and target.scheme == "https" and target.port in (None, 443)


async def fetch(http: httpx.AsyncClient, url: str, *, etag: str | None = None,
                last_modified: str | None = None, max_bytes: int = 10 << 20,
                deadline: float = 30.0) -> Fetched:
    """GET `url`; at most `max_bytes` of body (compressed or not), all within `deadline` seconds, following
    at most MAX_REDIRECTS redirects and only on `url`'s own host (the monitor contacts nothing else)."""
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    origin = target = httpx.URL(url)
    try:
        async with asyncio.timeout(deadline):
            for _hop in range(MAX_REDIRECTS + 1):
                async with http.stream("GET", target, headers=headers, follow_redirects=False) as r:
                    if not r.has_redirect_location:
                        return await _read(r, url, etag, last_modified, max_bytes)
                    nxt = r.url.join(r.headers["location"])
                    if not same_site(origin, nxt):
                        raise FetchError(f"{url} redirects to another host ({nxt.scheme}://{nxt.netloc.decode()}); "
                                         "not followed")
                    target = nxt
            raise FetchError(f"too many redirects from {url}")
    except TimeoutError:
        raise FetchError(f"no complete answer from {url} within {deadline:g} s") from None
    except httpx.TimeoutException:
        raise FetchError(f"timed out talking to {url}") from None
    except httpx.RemoteProtocolError as exc:
        if "peer closed" in str(exc) or "incomplete" in str(exc).lower():
            raise FetchError(f"the connection closed before the whole response from {url} arrived") from None
        raise FetchError(f"invalid HTTP response from {url}: {one_line(exc)}") from None
    except httpx.ConnectError as exc:
        raise FetchError(f"cannot connect to {url}: {one_line(exc)}".rstrip(": ")) from None
    except httpx.HTTPError as exc:
        raise FetchError(f"{type(exc).__name__} fetching {url}: {one_line(exc)}".rstrip(": ")) from None
    except (zlib.error, EOFError):
        raise FetchError(f"corrupt gzip body from {url}") from None
    except httpx.InvalidURL as exc:
        raise FetchError(f"invalid URL {url}: {one_line(exc)}") from None


async def _read(r: httpx.Response, url: str, etag: str | None, last_modified: str | None, max_bytes: int) -> Fetched:
    if r.status_code == 304:
        await r.aread()  # no body; reading it ends the message, so the connection goes back to the pool
        return Fetched(304, b"", "", etag, last_modified)
    if r.status_code == 429 or r.status_code == 503:
        now = datetime.now(timezone.utc)
        raise FetchError(f"HTTP {r.status_code} from {url}", retry_after(header(r, "retry-after"), now))
    if r.status_code != 200:
        raise FetchError(f"HTTP {r.status_code} from {url}")
    enc = (header(r, "content-encoding") or "identity").strip().lower()
    if enc not in ("identity", "gzip", ""):
        raise FetchError(f"unexpected content-encoding {enc!r} from {url}")
    declared = (header(r, "content-length") or "").strip()
    if declared.isascii() and declared.isdigit() and (len(declared) > 15 or int(declared) > max_bytes):
        raise FetchError(f"response from {url} is larger than {_mb(max_bytes)} ({declared} bytes announced); "
                         "not read")
    inflate = zlib.decompressobj(47) if enc == "gzip" else None
    out, raw = bytearray(), 0
    async for chunk in r.aiter_raw():
        raw += len(chunk)
        if raw > max_bytes:
            raise FetchError(f"response from {url} is larger than {_mb(max_bytes)}; stopped reading")
        out += inflate.decompress(chunk, max_bytes + 1 - len(out)) if inflate else chunk
        if len(out) > max_bytes:
            raise FetchError(f"response from {url} inflates past {_mb(max_bytes)}; stopped reading")
    if inflate is not None and not inflate.eof:
        raise FetchError(f"truncated gzip body from {url}")
    return Fetched(200, bytes(out), header(r, "content-type") or "", header(r, "etag"), header(r, "last-modified"))
