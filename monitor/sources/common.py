"""Helpers every source parser shares: tolerant timestamps, status words, text from HTML, incident ids."""
from __future__ import annotations

import calendar
import html
import io
import json
import re
import xml.sax
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from monitor.records import STATUSES

EARLIEST = datetime(2010, 1, 1, tzinfo=timezone.utc)


class ParseError(Exception):
    """A body was not the JSON or feed we expected (one-line message)."""


def plausible(t: datetime | None, now: datetime | None = None, rejected: list | None = None) -> datetime | None:
    """`t` when it can be an incident's time (2010 or later, at most a day ahead of `now`), else None,
    noted in `rejected`: such times come from a broken page, not from an incident."""
    if t is None:
        return None
    now = now or datetime.now(timezone.utc)
    if t < EARLIEST or t > now + timedelta(days=1):
        if rejected is not None:
            rejected.append(t)
        return None
    return t


def parse_time(value, now: datetime | None = None, rejected: list | None = None) -> datetime | None:
    """ISO 8601 (Z, 2- or 3-digit fractions) to aware UTC. Implausible times count as missing (and are
    noted in `rejected`), see `plausible`."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return plausible(t.astimezone(timezone.utc), now, rejected)


def struct_time_utc(t, now: datetime | None = None, rejected: list | None = None) -> datetime | None:
    if not t:
        return None
    try:
        dt = datetime.fromtimestamp(calendar.timegm(t), timezone.utc)
    except (OverflowError, ValueError, OSError):
        return None
    return plausible(dt, now, rejected)


def notes(*, skipped: int = 0, what: str = "incidents", untitled: int = 0, rejected: list | None = None) -> list[str]:
    """One-line notes on what a parser left out of an otherwise usable body."""
    out = []
    if skipped:
        out.append(f"{what} without an id skipped: {skipped}")
    if untitled:
        out.append(f"{what} without a title: {untitled}")
    if rejected:
        eg = min(rejected).isoformat().replace("+00:00", "Z")
        out.append(f"implausible timestamps ignored: {len(rejected)} (e.g. {eg})")
    return out


_STATUS_WORDS = {s: s for s in STATUSES} | {
    "fixing": "identified", "completed": "resolved", "closed": "resolved", "post-mortem": "postmortem",
    "post_mortem": "postmortem",
}


def norm_status(value) -> str | None:
    if not isinstance(value, str):
        return None
    return _STATUS_WORDS.get(value.strip().lower().replace(" ", "_"))


_IMPACT_WORDS = {
    "none": "none", "minor": "minor", "major": "major", "critical": "critical", "maintenance": "none",
    "operational": "none", "degraded_performance": "minor", "partial_outage": "major",
    "full_outage": "critical", "major_outage": "critical",
}


def norm_impact(value) -> str | None:
    if not isinstance(value, str):
        return None
    return _IMPACT_WORDS.get(value.strip().lower().replace(" ", "_"))


def incident_id_from_link(link: str | None) -> str | None:
    """The page's own id: the last path segment of the incident link (doubled slashes normalised), or of
    Atlassian's tag: id (`tag:host,2005:Incident/<id>`)."""
    if not link or not isinstance(link, str):
        return None
    path = urlsplit(link).path if "://" in link else link
    path = re.sub(r"/{2,}", "/", path).rstrip("/")
    seg = path.rsplit("/", 1)[-1].strip()
    return seg if re.fullmatch(r"[A-Za-z0-9_-]{4,100}", seg) else None


def canonical_url(base_url: str, incident_id: str) -> str:
    return f"{base_url.rstrip('/')}/incidents/{incident_id}"


_TAG = re.compile(r"<[^>]+>")
_BREAK = re.compile(r"<\s*(br|/p|/li|/ul|/div|p)\b[^>]*>", re.I)


def html_to_text(fragment: str) -> str:
    text = _BREAK.sub("\n", fragment or "")
    text = html.unescape(_TAG.sub("", text))
    lines = [re.sub(r"[ \t\r\f\v]+", " ", ln).strip() for ln in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def text_key(text: str | None) -> str:
    """A comparison key for update text that ignores Markdown/HTML markup, case and whitespace, so the same
    message from the feed (HTML), the API (Markdown) and the proxy (plain) compares equal."""
    if not text:
        return ""
    t = html.unescape(_TAG.sub(" ", _MD_LINK.sub(r"\1", text)))
    return _NON_WORD.sub(" ", t.lower()).strip()


def load_json(body: bytes, what: str) -> object:
    if not body.strip():
        raise ParseError(f"{what}: empty body")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ParseError(f"{what}: not UTF-8") from None
    except ValueError:
        head = body.lstrip()[:15].lower()
        kind = "an HTML page" if head.startswith((b"<!doctype", b"<html")) else "not JSON"
        raise ParseError(f"{what}: {kind}") from None


def load_feed(body: bytes, content_type: str, what: str):
    """feedparser on bytes we fetched ourselves (it must never fetch or read files). A body that is not a
    feed, or a feed cut short, is an error: missing items must never read as "gone" or "resolved"."""
    import feedparser

    if not body.strip():
        raise ParseError(f"{what}: empty body")
    if _ENTITY.search(body[:65536]):
        # feedparser would not expand them, but a status page never declares any: refuse the body
        raise ParseError(f"{what}: declares XML entities (a DTD); refused")
    if _charset(body, content_type) in ("utf-8", "utf8"):
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError(f"{what}: not UTF-8") from None
    d = feedparser.parse(io.BytesIO(body), response_headers={"content-type": content_type or "application/xml"})
    if not d.get("version") or isinstance(d.get("bozo_exception"), xml.sax.SAXException):
        head = body.lstrip()[:15].lower()
        kind = "an HTML page" if head.startswith((b"<!doctype", b"<html")) else "not a valid feed"
        raise ParseError(f"{what}: {kind}")
    return d


_ENTITY = re.compile(rb"<!ENTITY", re.I)


def _charset(body: bytes, content_type: str | None) -> str:
    """The encoding a feed declares (HTTP charset, else its XML declaration), UTF-8 when it declares none."""
    m = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", content_type or "", re.I)
    if m:
        return m.group(1).lower()
    m = re.match(rb"\s*<\?xml[^>]*encoding\s*=\s*[\"']([\w.:-]+)", body[:300])
    return m.group(1).decode("ascii").lower() if m else "utf-8"
