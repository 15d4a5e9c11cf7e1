"""What every page kind shares: the interface a kind implements (`PageKind`), the one boundary where an
answer becomes records or that source's error (`PageKind.read`), and the parsers' helpers: tolerant
timestamps, status words, text from HTML, incident ids."""
from __future__ import annotations

import calendar
import html
import io
import json
import logging
import re
import xml.sax
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from monitor.records import STATUSES, SourceResult, cap, iso_z, now_utc, parse_iso

EARLIEST = datetime(2010, 1, 1, tzinfo=timezone.utc)
log = logging.getLogger("monitor.sources")


class ParseError(Exception):
    """A body was not the JSON or feed we expected (one-line message): the error of that one source."""


@dataclass(frozen=True, slots=True)
class Context:
    """What a kind needs besides an answer's bytes to read it."""
    base_url: str                 # the page, for incident links
    host: str                     # the host incident.io's proxy paths name
    now: datetime
    time_zone: str | None = None  # the page's own zone (Atlassian feeds write local times), when known


@dataclass
class Backfill:
    """What a kind's backfill got: one result per answer it could read, the paths that answered, and
    one line per cause of what failed."""
    results: list[SourceResult]
    answered: list[str]
    errors: list[str]


Fetch = Callable[[str], Awaitable]     # path -> sources.http.Fetched; raises sources.http.FetchError


class PageKind:
    """One kind of status page. The poll asks it which paths to fetch, hands it each answer to read (through
    `read`, the one boundary: whatever goes wrong while reading an answer is that source's ParseError), and
    lets it backfill with a fetch function it is given. A new kind is one module with one subclass, and one
    line in `monitor.sources.KINDS`."""

    name = ""
    poll_paths: tuple[str, ...] = ()        # fetched on every poll
    components_path: str | None = None      # fetched at most every `components_every`
    components_every = timedelta(hours=1)
    timelines = False                       # True: lists lack full timelines; fetch `timeline_path`s
    history = False                         # True: `backfill` offers incidents older than the lists

    def recognises(self, summary_page: dict | None, feed: bytes | None) -> bool:
        """Whether a page is of this kind, from the `page` object of its summary.json or, without one, from
        its history feed."""
        return False

    def paths(self, fetched_at: dict[str, datetime | None], now: datetime) -> list[str]:
        """The paths to fetch on this poll, given when each was last read."""
        out = list(self.poll_paths)
        if self.components_path:
            last = fetched_at.get(self.components_path)
            if last is None or now - last > self.components_every:
                out.append(self.components_path)
        return out

    def parse(self, path: str, body: bytes, content_type: str, ctx: Context) -> SourceResult:
        """One answer as records; ParseError when it is not what this path serves."""
        raise NotImplementedError

    def read(self, path: str, body: bytes, content_type: str, ctx: Context) -> SourceResult:
        """`parse`, with every exception it raises turned into this source's ParseError (and logged with
        its type): a field of a type nobody expected must never crash a poll."""
        try:
            return self.parse(path, body, content_type, ctx)
        except ParseError:
            raise
        except Exception as exc:   # the boundary: anything else is a bug met on odd input, not a crash
            reason = one_line(exc)
            log.warning("%s: cannot read %s: %s: %s", self.name, path, type(exc).__name__, reason)
            raise ParseError(f"cannot read this answer ({type(exc).__name__}: {reason})") from None

    def timeline_path(self, host: str, incident_id: str) -> str | None:
        """The path of one incident's full timeline, when the lists lack it; None: they carry it."""
        return None

    async def backfill(self, fetch: Fetch, ctx: Context, since: datetime, *, details: bool) -> Backfill:
        raise ParseError("this page kind offers no history beyond its recent incidents")


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, capped."""
    return cap(" ".join(str(exc).split()) or type(exc).__name__, limit)


def by_cause(what: str, failures: list[str], unit: str = "incident") -> list[str]:
    """One line per cause instead of one per item: "timelines unavailable for 28 incidents: HTTP 404"."""
    return [f"{what} unavailable for {n} {unit}{'s' * (n != 1)}: {why}" for why, n in Counter(failures).most_common()]


def cause(message: str, url: str) -> str:
    """A fetch error's message without the URL it names, so errors of many URLs group by cause."""
    out = re.sub(r"\s*\b(?:from|to|talking to)\s+" + re.escape(url), "", message)
    return out.replace(url, "").strip(" :") or message


def as_list(value) -> list:
    """`value` when it is a list, else []: a page field of another type is ignored, not iterated."""
    return value if isinstance(value, list) else []


def as_str(value) -> str:
    """`value` stripped when it is a string, else ""."""
    return value.strip() if isinstance(value, str) else ""


def plausible(t: datetime | None, now: datetime | None = None, rejected: list | None = None) -> datetime | None:
    """`t` when it can be an incident's time (2010 or later, at most a day ahead of `now`), else None,
    noted in `rejected`: such times come from a broken page, not from an incident."""
    if t is None:
        return None
    now = now or now_utc()
    if t < EARLIEST or t > now + timedelta(days=1):
        if rejected is not None:
            rejected.append(t)
        return None
    return t


def parse_time(value, now: datetime | None = None, rejected: list | None = None) -> datetime | None:
    """ISO 8601 (Z, 2- or 3-digit fractions) to aware UTC. Implausible times count as missing (and are
    noted in `rejected`), see `plausible`."""
    return plausible(parse_iso(value), now, rejected)


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
        eg = iso_z(min(rejected))
        out.append(f"implausible timestamps ignored: {len(rejected)} (e.g. {eg})")
    return out


_STATUS_WORDS = {s: s for s in STATUSES} | {
    "fixing": "identified", "completed": "resolved", "closed": "resolved", "post-mortem": "postmortem",
    "post_mortem": "postmortem", "in-progress": "in_progress", "maintenance_in_progress": "in_progress",
    "maintenance_scheduled": "scheduled", "upcoming": "scheduled",
}


def norm_status(value) -> str | None:
    if not isinstance(value, str):
        return None
    return _STATUS_WORDS.get(value.strip().lower().replace(" ", "_"))


_IMPACT_WORDS = {
    "none": "none", "minor": "minor", "major": "major", "critical": "critical", "maintenance": "maintenance",
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


_TAG = re.compile(r"<[A-Za-z/!][^>]*>")
_BREAK = re.compile(r"<\s*(?:br|p|/p|li|/li|/ul|div|/div|/h[1-6])\b[^>]*>", re.I)


def strip_html(text: str, tag: str = "") -> str:
    """HTML tags out (line-breaking ones become newlines, the others `tag`), entities decoded."""
    if "<" in text:
        text = _TAG.sub(tag, _BREAK.sub("\n", text))
    return html.unescape(text) if "&" in text else text


def html_to_text(fragment: str) -> str:
    """A page's HTML fragment as plain text: one space between words, at most one blank line."""
    text = strip_html(fragment or "")
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
