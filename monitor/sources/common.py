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


def parse_time(value, now: datetime | None = None) -> datetime | None:
    """ISO 8601 (Z, 2- or 3-digit fractions) to aware UTC. Implausible times (before 2010 or more than a day
    ahead of `now`) count as missing: they come from a broken page, not from an incident."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    t = t.astimezone(timezone.utc)
    now = now or datetime.now(timezone.utc)
    if t < EARLIEST or t > now + timedelta(days=1):
        return None
    return t


def struct_time_utc(t, now: datetime | None = None) -> datetime | None:
    if not t:
        return None
    dt = datetime.fromtimestamp(calendar.timegm(t), timezone.utc)
    now = now or datetime.now(timezone.utc)
    return None if dt < EARLIEST or dt > now + timedelta(days=1) else dt


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
    d = feedparser.parse(io.BytesIO(body), response_headers={"content-type": content_type or "application/xml"})
    if not d.get("version") or isinstance(d.get("bozo_exception"), xml.sax.SAXException):
        head = body.lstrip()[:15].lower()
        kind = "an HTML page" if head.startswith((b"<!doctype", b"<html")) else "not a valid feed"
        raise ParseError(f"{what}: {kind}")
    return d
