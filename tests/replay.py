"""Replay server for status pages: real incident history served over real HTTP.

Standard library only.  Serves the two page kinds described in
``docs/status-formats.md`` (shared copy: /work/shared/docs/status-formats.md):

* ``StatuspagePage``  - an Atlassian Statuspage (status.openai.com until early
  2025, status.anthropic.com and thousands of others today);
* ``IncidentIoPage``  - an incident.io page (status.openai.com today), with its
  lossy Statuspage-compatible JSON, its rewrite-in-place feeds and its own
  ``/proxy/<host>`` JSON.

Everything is rendered at the simulated time ``ReplayServer.now``: an update is
visible once it has been posted (``posted_at`` or ``at`` <= now), so moving
``now`` between polls replays an incident as it unfolded.

    with ReplayServer(StatuspagePage(load_history("openai"))) as srv:
        srv.now = datetime(2024, 5, 30, 18, 0, tzinfo=timezone.utc)
        httpx.get(srv.base_url + "/api/v2/summary.json")
        srv.faults["/history.atom"] = Fault.rate_limited(retry_after=120)
"""

from __future__ import annotations

import csv
import gzip as _gzip
import hashlib
import html
import json
import random
import re
import socket
import struct
import threading
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape as xml_escape

UTC = timezone.utc
DATA_DIR = Path(__file__).resolve().parent / "data"
HISTORY_DIR = DATA_DIR / "history"
INCIDENTIO_DIR = DATA_DIR / "incidentio"

STATUSES = ("investigating", "identified", "monitoring", "resolved", "postmortem")
CLOSED_STATUSES = ("resolved", "postmortem")

# Statuspage words for component states, least to most severe.
SP_COMPONENT_SEVERITY = {
    "operational": 0,
    "under_maintenance": 1,
    "degraded_performance": 2,
    "partial_outage": 3,
    "major_outage": 4,
}
# incident.io words (its own JSON says full_outage where Statuspage says major_outage).
IO_COMPONENT_SEVERITY = {
    "operational": 0,
    "under_maintenance": 1,
    "degraded_performance": 2,
    "partial_outage": 3,
    "full_outage": 4,
}
IO_STATE_LABEL = {
    "operational": "Operational",
    "under_maintenance": "Under maintenance",
    "degraded_performance": "Degraded performance",
    "partial_outage": "Partial outage",
    "full_outage": "Full outage",
}


# --------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------


@dataclass
class ReplayUpdate:
    status: str  # investigating | identified | monitoring | resolved | postmortem
    body: str  # plain text (history) or Markdown (incident.io incidents)
    at: datetime  # display time, UTC aware
    id: str
    # When the update was actually posted, if later than ``at`` (a back-dated
    # update: Statuspage/incident.io ``display_at`` < ``created_at``).
    posted_at: datetime | None = None
    # Label shown on Atlassian pages ("Update" for an update that kept the status).
    label: str | None = None

    @property
    def posted(self) -> datetime:
        return self.posted_at or self.at


@dataclass
class ReplayIncident:
    id: str
    title: str
    # Statuspage words (none/minor/major/critical/maintenance) or incident.io
    # worst impact (degraded_performance/partial_outage/full_outage).
    impact: str
    components: list[tuple[str, str]]  # (component id, name)
    updates: list[ReplayUpdate]  # ascending time
    url_id: str | None = None  # id used in public URLs, when it differs from ``id``
    # Per-component impact (incident.io words), overriding ``impact``.
    component_impacts: dict[str, str] | None = None

    # -- time travel ------------------------------------------------------
    def visible_updates(self, now: datetime) -> list[ReplayUpdate]:
        return [u for u in self.updates if u.posted <= now]

    def is_visible(self, now: datetime) -> bool:
        return any(u.posted <= now for u in self.updates)

    def status_at(self, now: datetime) -> str | None:
        vis = self.visible_updates(now)
        return vis[-1].status if vis else None

    def is_open(self, now: datetime) -> bool:
        st = self.status_at(now)
        return st is not None and st not in CLOSED_STATUSES

    def resolved_at(self, now: datetime) -> datetime | None:
        for u in self.updates:
            if u.posted <= now and u.status == "resolved":
                return u.at
        return None

    def first_at(self, status: str, now: datetime) -> datetime | None:
        for u in self.updates:
            if u.posted <= now and u.status == status:
                return u.at
        return None

    @property
    def started_at(self) -> datetime:
        """Start as displayed (a back-dated first update moves it earlier)."""
        return min(u.at for u in self.updates)

    @property
    def created_at(self) -> datetime:
        """When the incident was first published."""
        return min(u.posted for u in self.updates)

    def last_update(self, now: datetime) -> ReplayUpdate | None:
        vis = self.visible_updates(now)
        return vis[-1] if vis else None

    @property
    def public_id(self) -> str:
        return self.url_id or self.id

    def sp_impact(self) -> str:
        return sp_impact(self.impact)

    def io_impact_for(self, component_id: str) -> str:
        if self.component_impacts and component_id in self.component_impacts:
            return io_state(self.component_impacts[component_id])
        return io_impact(self.impact)

    def io_worst_impact(self) -> str:
        words = [self.io_impact_for(cid) for cid, _ in self.components] or [io_impact(self.impact)]
        return max(words, key=lambda w: IO_COMPONENT_SEVERITY.get(w, 0))


def sp_impact(impact: str) -> str:
    """Any impact word -> Statuspage incident impact."""
    return {
        "degraded_performance": "minor",
        "partial_outage": "major",
        "full_outage": "critical",
        "major_outage": "critical",
        "under_maintenance": "maintenance",
        "operational": "none",
    }.get(impact, impact if impact in ("none", "minor", "major", "critical", "maintenance") else "none")


def io_impact(impact: str) -> str:
    """Any impact word -> incident.io component impact."""
    return {
        "none": "degraded_performance",
        "minor": "degraded_performance",
        "maintenance": "degraded_performance",
        "major": "partial_outage",
        "critical": "full_outage",
        "major_outage": "full_outage",
    }.get(impact, impact if impact in IO_COMPONENT_SEVERITY else "degraded_performance")


def io_state(word: str) -> str:
    """Component state word (either vocabulary) -> incident.io word."""
    return {"major_outage": "full_outage"}.get(word, word)


def sp_state(word: str) -> str:
    """Component state word (either vocabulary) -> Statuspage word."""
    return {"full_outage": "major_outage"}.get(word, word)


def sp_component_state(impact: str) -> str:
    """Statuspage incident impact -> component status while the incident is open."""
    return {
        "none": "operational",
        "minor": "degraded_performance",
        "major": "partial_outage",
        "critical": "major_outage",
        "maintenance": "under_maintenance",
    }.get(impact, sp_state(impact) if impact in IO_COMPONENT_SEVERITY else "degraded_performance")


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --------------------------------------------------------------------------
# Time helpers
# --------------------------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}

# Fixed offsets (hours) of the abbreviations that may appear in scraped pages.
_TZ_FIXED = {
    "UTC": 0, "GMT": 0, "Z": 0, "BST": 1, "CET": 1, "CEST": 2,
    "PDT": -7, "PST": -8, "MDT": -6, "MST": -7, "CDT": -5, "CST": -6, "EDT": -4, "EST": -5,
}
# Generic US zones: standard offset, DST decided by the date.
_TZ_US_GENERIC = {"PT": -8, "MT": -7, "CT": -6, "ET": -5}


def _us_dst_local(local: datetime) -> bool:
    """US daylight saving rules (2007+) for a naive local wall time."""
    y = local.year
    mar1 = datetime(y, 3, 1)
    start = mar1 + timedelta(days=(6 - mar1.weekday()) % 7 + 7, hours=2)
    nov1 = datetime(y, 11, 1)
    end = nov1 + timedelta(days=(6 - nov1.weekday()) % 7, hours=2)
    return start <= local.replace(tzinfo=None) < end


class PageTimeZone:
    """The page's ``time_zone``: Etc/UTC or America/Los_Angeles (own DST rules),
    anything else through zoneinfo when available."""

    def __init__(self, name: str):
        self.name = name
        self._zone = None
        if name not in ("Etc/UTC", "UTC", "America/Los_Angeles"):
            try:
                from zoneinfo import ZoneInfo
                self._zone = ZoneInfo(name)
            except Exception:  # pragma: no cover - missing tzdata
                self.name = "Etc/UTC"

    def local(self, dt: datetime) -> tuple[datetime, str]:
        dt = dt.astimezone(UTC)
        if self._zone is not None:
            loc = dt.astimezone(self._zone)
            return loc, loc.tzname() or "UTC"
        if self.name == "America/Los_Angeles":
            std = (dt + timedelta(hours=-8)).replace(tzinfo=None)
            if _us_dst_local(std + timedelta(hours=1)):
                return dt.astimezone(timezone(timedelta(hours=-7))), "PDT"
            return dt.astimezone(timezone(timedelta(hours=-8))), "PST"
        return dt, "UTC"


def _offset_suffix(loc: datetime, colon: bool = True) -> str:
    off = loc.utcoffset() or timedelta(0)
    if off == timedelta(0):
        return "Z"
    sign = "+" if off >= timedelta(0) else "-"
    minutes = abs(int(off.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}{':' if colon else ''}{minutes % 60:02d}"


def iso_statuspage(dt: datetime, tz: PageTimeZone | None = None) -> str:
    """Atlassian API style: milliseconds, Z for UTC pages, else the page's offset."""
    loc, _ = (tz or PageTimeZone("Etc/UTC")).local(dt)
    return f"{loc:%Y-%m-%dT%H:%M:%S}.{loc.microsecond // 1000:03d}{_offset_suffix(loc)}"


def iso_seconds(dt: datetime, tz: PageTimeZone | None = None) -> str:
    """Atlassian feed style: whole seconds."""
    loc, _ = (tz or PageTimeZone("Etc/UTC")).local(dt)
    return f"{loc:%Y-%m-%dT%H:%M:%S}{_offset_suffix(loc)}"


def iso_go(dt: datetime) -> str:
    """incident.io style (Go RFC3339Nano): fraction without trailing zeros -
    ``…:56Z``, ``…:22.018Z``, ``…:34.66Z``."""
    dt = dt.astimezone(UTC)
    base = f"{dt:%Y-%m-%dT%H:%M:%S}"
    if dt.microsecond:
        base += "." + f"{dt.microsecond:06d}".rstrip("0")
    return base + "Z"


def iso_js(dt: datetime) -> str:
    """JavaScript toISOString (incident.io feeds): always milliseconds."""
    dt = dt.astimezone(UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"


def http_date(dt: datetime) -> str:
    return format_datetime(dt.astimezone(UTC).replace(microsecond=0), usegmt=True)


def rfc822(dt: datetime, tz: PageTimeZone | None = None) -> str:
    loc, _ = (tz or PageTimeZone("Etc/UTC")).local(dt)
    return f"{loc:%a, %d %b %Y %H:%M:%S} {_offset_suffix(loc, colon=False).replace('Z', '+0000')}"


def parse_iso(value: str) -> datetime:
    """Lenient ISO 8601 (Z, offsets, 1-9 fraction digits, bare dates) -> aware UTC."""
    v = value.strip()
    m = re.match(r"^(.*T\d{2}:\d{2}:\d{2})\.(\d+)(.*)$", v)
    if m:  # normalise the fraction to 6 digits for fromisoformat
        v = f"{m[1]}.{(m[2] + '000000')[:6]}{m[3]}"
    if v.endswith(("Z", "z")):
        v = v[:-1] + "+00:00"
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _as_utc(value: datetime | date | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_iso(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


# --------------------------------------------------------------------------
# History CSV loader
# --------------------------------------------------------------------------

# The scrape behind the CSVs ran around 2024-08-31: its newest relative stamp is
# "Posted 18 hours ago. Aug 30, 2024 - 13:30 PDT".  Used only when a stamp lacks its year.
SCRAPE_REFERENCE = datetime(2024, 8, 31, 14, 30, tzinfo=UTC)

_TS_RE = re.compile(
    r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?\s+"
    r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
    r"(?:,?\s+(?P<year>\d{4}))?"
    r"\s*(?:-|–|,|at|@)?\s*"
    r"(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?"
    r"\s*(?P<ampm>[AaPp]\.?[Mm]\.?)?"
    r"\s*(?P<tz>[A-Z]{1,5}|[+-]\d{2}:?\d{2})?",
    re.I,
)
_AGO_RE = re.compile(
    r"(?:(?P<n>\d+|an?|one)\s+(?P<unit>minute|hour|day|week|month|year)s?\s+ago)|(?P<yesterday>yesterday)",
    re.I,
)
_UNIT_DAYS = {"minute": 1 / 1440, "hour": 1 / 24, "day": 1, "week": 7, "month": 30.44, "year": 365.25}


def _ago_range(text: str) -> tuple[float, float] | None:
    """'Posted 3 months ago' -> plausible age range in days (moment.js-style rounding)."""
    m = _AGO_RE.search(text)
    if not m:
        return None
    if m["yesterday"]:
        return (0.5, 2.0)
    n = 1 if m["n"].lower() in ("a", "an", "one") else int(m["n"])
    unit = m["unit"].lower()
    if unit == "year" and n == 1:
        return (320.0, 548.0)
    if unit == "month" and n == 1:
        return (25.0, 45.0)
    d = _UNIT_DAYS[unit]
    return (max(0.0, (n - 0.5) * d), (n + 0.5) * d)


def _tz_offset(tzword: str | None, naive: datetime) -> timedelta:
    if not tzword:
        return timedelta(hours=-7 if _us_dst_local(naive) else -8)  # page is US Pacific
    t = tzword.upper()
    if t in _TZ_FIXED:
        return timedelta(hours=_TZ_FIXED[t])
    if t in _TZ_US_GENERIC:
        return timedelta(hours=_TZ_US_GENERIC[t] + (1 if _us_dst_local(naive) else 0))
    m = re.match(r"^([+-])(\d{2}):?(\d{2})$", tzword)
    if m:
        off = timedelta(hours=int(m[2]), minutes=int(m[3]))
        return off if m[1] == "+" else -off
    raise ValueError(f"unknown time zone {tzword!r}")


def parse_status_timestamp(text: str, *, after: datetime | None = None,
                           reference: datetime = SCRAPE_REFERENCE) -> datetime:
    """Parse a scraped Statuspage stamp such as
    ``"Posted 3 months ago. May 31, 2024 - 18:05 PDT"`` into an aware UTC datetime.

    Handles PDT/PST and other abbreviations (PT decided by the date), 12-hour
    clocks, and a missing year: inferred from "Posted N units ago" relative to
    ``reference``, else from ``after`` (the previous update), else ``reference``.
    """
    m = _TS_RE.search(text)
    if not m:
        raise ValueError(f"unparseable timestamp: {text!r}")
    month = _MONTHS[m["mon"][:3].lower()]
    day = int(m["day"])
    hour, minute, second = int(m["h"]), int(m["mi"]), int(m["s"] or 0)
    if m["ampm"]:
        pm = m["ampm"][0].lower() == "p"
        hour = hour % 12 + (12 if pm else 0)

    def build(year: int) -> datetime:
        naive = datetime(year, month, day, hour, minute, second)
        return (naive - _tz_offset(m["tz"], naive)).replace(tzinfo=UTC)

    if m["year"]:
        return build(int(m["year"]))
    ref = reference.astimezone(UTC)
    candidates = []
    for y in range(ref.year - 12, ref.year + 2):
        try:
            candidates.append(build(y))
        except ValueError:  # Feb 29
            pass
    rng = _ago_range(text)
    if rng:
        lo, hi = rng

        def score(c: datetime) -> tuple[float, float]:
            age = (ref - c).total_seconds() / 86400
            outside = 0.0 if lo <= age <= hi else min(abs(age - lo), abs(age - hi))
            return (outside, abs(age - (lo + hi) / 2))
        return min(candidates, key=score)
    if after is not None:
        later = [c for c in candidates if c >= after - timedelta(days=1)]
        if later:
            return min(later)
    past = [c for c in candidates if c <= ref + timedelta(days=1)]
    return max(past) if past else min(candidates)


def parse_service(service: str) -> list[tuple[str, str]]:
    """"This incident affected: API, ChatGPT, and Labs." -> [(id, name), ...]."""
    s = (service or "").strip()
    if not s:
        return []
    s = re.sub(r"^\s*This incident affected:\s*", "", s, flags=re.I)
    if s.endswith("."):
        s = s[:-1]
    names = [p.strip() for p in re.split(r",\s*(?:and\s+)?|\s+and\s+", s) if p.strip()]
    return [(slugify(n), n) for n in names]


def _incident_from_row(row: dict[str, str], source: str) -> ReplayIncident:
    link = (row.get("Incident_Link") or "").strip().rstrip("/")
    iid = link.rsplit("/", 1)[-1]
    impact = (row.get("Incident_Impact") or "").strip()
    impact = impact[len("impact-"):] if impact.startswith("impact-") else (impact or "none")
    raw = json.loads(row.get("Updates") or "[]")
    raw.reverse()  # the CSV lists updates newest first
    updates: list[ReplayUpdate] = []
    status = "investigating"
    prev_at: datetime | None = None
    for i, u in enumerate(raw):
        label = (u.get("Update_Title") or "").strip()
        word = label.lower()
        if word in STATUSES:
            status = word
        at = parse_status_timestamp(u.get("Update_Timestamp") or "", after=prev_at)
        prev_at = at
        updates.append(ReplayUpdate(status=status, body=(u.get("Update_Body") or "").strip(),
                                    at=at, id=f"{iid}-{i}", label=label or None))
    # Stamps have minute precision: keep list order for equal minutes (stable sort).
    updates.sort(key=lambda u: u.at)
    return ReplayIncident(id=iid, title=(row.get("Incident_Title") or "").strip(), impact=impact,
                          components=parse_service(row.get("Service") or ""), updates=updates)


def load_history(kind: str = "openai", since: datetime | date | str | None = None,
                 until: datetime | date | str | None = None, *,
                 directory: str | Path | None = None) -> list[ReplayIncident]:
    """Incidents from tests/data/history/<kind>/*.csv, oldest first.

    ``since``/``until`` filter on the incident's start (first update):
    since <= start < until.  Fresh objects on every call (safe to mutate).
    """
    folder = Path(directory) if directory else HISTORY_DIR / kind
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no history CSV in {folder}")
    lo, hi = _as_utc(since), _as_utc(until)
    out: list[ReplayIncident] = []
    for f in files:
        with f.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                inc = _incident_from_row(row, f.name)
                if not inc.updates:
                    continue
                start = inc.updates[0].at
                if (lo and start < lo) or (hi and start >= hi):
                    continue
                out.append(inc)
    out.sort(key=lambda i: i.updates[0].at)
    return out


# --------------------------------------------------------------------------
# ULIDs and incident.io-era fixtures
# --------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def make_ulid(at: datetime, seed: str) -> str:
    """Deterministic 26-character ULID: time part from ``at``, randomness from ``seed``."""
    ms = int(at.timestamp() * 1000)
    t = "".join(_CROCKFORD[(ms >> (5 * (9 - i))) & 31] for i in range(10))
    r = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:10], "big")
    return t + "".join(_CROCKFORD[(r >> (5 * (15 - i))) & 31] for i in range(16))


INCIDENTIO_PAGE_ID = "01JMWJ15R0XW7Q4V2K9T6DMS3P"

# (component id, name, group).  Ids are stable; two components are named "Login".
INCIDENTIO_COMPONENTS: list[tuple[str, str, str]] = [
    ("01JMWJ15R02YHYQAA82FBC4YK3", "Responses", "APIs"),
    ("01JMWJ15R0WPNPMX3Q12C07REE", "Chat Completions", "APIs"),
    ("01JMWJ15R0MYE5EGYXKVNZF27G", "Embeddings", "APIs"),
    ("01JMWJ15R0AT5ZB13N4A2PJJVZ", "Images", "APIs"),
    ("01JMWJ15R01HC8PDN9W73NV07M", "Audio", "APIs"),
    ("01JMWJ15R0NDX6BT69HE9NCTK9", "Realtime", "APIs"),
    ("01JMWJ15R0C5D76953QWD4NVF8", "Batch", "APIs"),
    ("01JMWJ15R0EQGK7W9S2DF2JNCX", "Files", "APIs"),
    ("01JMWJ15R0E0Z27YTNS8WGW0CY", "Fine-tuning", "APIs"),
    ("01JMWJ15R0C1PNQD0SXXRF90V8", "Moderations", "APIs"),
    ("01JMWJ15R0FS7H96ZAN37VKVCK", "Login", "APIs"),
    ("01JMWJ15R0JB84NWD143940P03", "Conversations", "ChatGPT"),
    ("01JMWJ15R0BR3A85D7YPPVBKB6", "Login", "ChatGPT"),
    ("01JMWJ15R0B7DGV175NERH8JX8", "Compliance API", "ChatGPT"),
    ("01JMWJ15R0PCN47WGTHSY5NQ74", "Search", "ChatGPT"),
    ("01JMWJ15R0Z7CXA5FSV1790GC7", "File uploads", "ChatGPT"),
    ("01JMWJ15R0NQB5GJ0F6W57JWG0", "Voice mode", "ChatGPT"),
    ("01JMWJ15R0P703C1XJB3B1WQ67", "GPTs", "ChatGPT"),
    ("01JMWJ15R0KRNW8FZMXB41MGP8", "Image Generation", "ChatGPT"),
    ("01JMWJ15R028XZQYS98MHWC501", "Deep Research", "ChatGPT"),
    ("01JMWJ15R0CWSA1CYG6P45DVKJ", "Agent", "ChatGPT"),
    ("01JMWJ15R0R0TW2DW00HDFRE1A", "ChatGPT Atlas", "ChatGPT"),
    ("01JMWJ15R06B0N37APM7272D6K", "Connectors/Apps", "ChatGPT"),
    ("01JMWJ15R07T05SWEQA5HNYFQF", "Codex Web", "Codex"),
    ("01JMWJ15R07ATHR016HE0EBC9K", "Codex API", "Codex"),
    ("01JMWJ15R09SV3RGJ3HRHHBQ8E", "CLI", "Codex"),
    ("01JMWJ15R0ETMBNWPRKP299PZ6", "VS Code extension", "Codex"),
    ("01JMWJ15R0EFAPVS7MXA92N4MC", "Sora", "Others"),
    ("01JMWJ15R08PWBFEMSMV8JCKP9", "Video generation", "Others"),
    ("01JMWJ15R0YGM9M5F79PRH7413", "Video viewing", "Others"),
    ("01JMWJ15R0B47MR3ZK29CG3AFP", "FedRAMP", "Others"),
    ("01JMWJ15R08C3V1WX3R6C9N8SZ", "Ads", "Others"),
]
INCIDENTIO_GROUP_IDS = {
    "APIs": "01JMWJ15R0YA9F9DA7HK5WBN4B",
    "ChatGPT": "01JMWJ15R072675KJ39022HFWG",
    "Codex": "01JMWJ15R0N37G6YBQNZZ48R2B",
    "Others": "01JMWJ15R058JSQ0AFM5038W3B",
}

COMPONENT_FILE_UPLOADS = "01JMWJ15R0Z7CXA5FSV1790GC7"  # ChatGPT / File uploads
COMPONENT_API_FILES = "01JMWJ15R0EQGK7W9S2DF2JNCX"  # APIs / Files
COMPONENT_API_LOGIN = "01JMWJ15R0FS7H96ZAN37VKVCK"  # APIs / Login
COMPONENT_CHATGPT_LOGIN = "01JMWJ15R0BR3A85D7YPPVBKB6"  # ChatGPT / Login
COMPONENT_IMAGE_GENERATION = "01JMWJ15R0KRNW8FZMXB41MGP8"  # ChatGPT / Image Generation
COMPONENT_CODEX_WEB = "01JMWJ15R07T05SWEQA5HNYFQF"  # Codex / Codex Web


def _t(s: str) -> datetime:
    return parse_iso(s)


# The hand-written incident.io-era incidents: (key, title, impact, {component: impact},
# [(status, display_at, posted_at or None, markdown body)]).
_IO_SPECS: list[tuple[str, str, str, dict[str, str], list[tuple[str, str, str | None, str]]]] = [
    ("file-expired",
     "File uploads to ChatGPT conversations are failing for some users, giving an error message "
     "indicating the file has expired",
     "partial_outage", {COMPONENT_FILE_UPLOADS: "partial_outage"}, [
         ("investigating", "2025-11-14T17:05:00Z", "2025-11-14T17:32:56Z",
          "We are investigating reports that file uploads to ChatGPT conversations are failing for "
          "some users. Affected users see an error message saying the file has expired, even for "
          "files uploaded moments earlier."),
         ("identified", "2025-11-14T18:04:22.018Z", None,
          "We have identified the cause of the failed uploads and are rolling out a fix. Uploads "
          "may keep failing with the \"file has expired\" message until the fix reaches all users."),
         ("monitoring", "2025-11-14T18:41:34.66Z", None,
          "A fix has been deployed and file uploads are succeeding again. We are monitoring the "
          "results.\n\nIf an upload failed during this incident, upload the file again in a new "
          "message; files that failed to upload were not saved."),
         ("resolved", "2025-11-14T19:20:11Z", None,
          "This incident has been resolved. Between 17:05 and 18:40 UTC some file uploads to ChatGPT "
          "conversations failed with an error indicating the file had expired."),
     ]),
    ("image-latency", "Increased latency for Image Generation", "degraded_performance",
     {COMPONENT_IMAGE_GENERATION: "degraded_performance"}, [
         ("investigating", "2026-01-20T09:48:13Z", None,
          "We are investigating increased latency for image generation in ChatGPT. Some images are "
          "taking several minutes to appear."),
         ("identified", "2026-01-20T10:15:40.5Z", None,
          "We have identified a capacity issue affecting image generation and are adding capacity."),
         ("monitoring", "2026-01-20T10:52:07.204Z", None,
          "Latency for image generation has returned to normal levels. We are monitoring."),
         ("resolved", "2026-01-20T11:30:00Z", None,
          "This incident has been resolved. Image generation latency is back to normal."),
     ]),
    ("chatgpt-login", "Login issues", "partial_outage", {COMPONENT_CHATGPT_LOGIN: "partial_outage"}, [
         ("investigating", "2026-02-10T14:02:31Z", None,
          "Some users are unable to log in to ChatGPT and see an error after entering their "
          "credentials. Users who are already logged in are not affected. Login to the API "
          "platform is not affected."),
         ("identified", "2026-02-10T14:26:09.31Z", None,
          "We have identified an issue with a recent change to our authentication service and are "
          "rolling it back."),
         ("monitoring", "2026-02-10T14:58:44Z", None,
          "The change has been rolled back and logins are succeeding. We are monitoring the results."),
         ("resolved", "2026-02-10T15:35:18.007Z", None,
          "This incident has been resolved. Users who could not log in between 13:50 and 14:55 UTC "
          "should now be able to log in."),
     ]),
    ("codex-github", "Codex cloud tasks failing to clone GitHub repositories", "degraded_performance",
     {COMPONENT_CODEX_WEB: "degraded_performance"}, [
         ("investigating", "2026-02-24T19:40:00Z", "2026-02-24T19:58:03.115Z",
          "We are investigating failures when Codex cloud tasks clone repositories from GitHub. "
          "Affected tasks stop with an error such as:\n\n"
          "```\nfatal: unable to access 'https://github.com/org/repo.git/': "
          "The requested URL returned error: 503\n```"),
         ("identified", "2026-02-24T20:21:47Z", None,
          "The failures are caused by an ongoing incident at GitHub. Follow "
          "[GitHub's status page](https://www.githubstatus.com/ \"GitHub's status page\") for "
          "their progress. Retrying a failed task once GitHub recovers will succeed."),
         ("resolved", "2026-02-24T21:44:29.9Z", None,
          "GitHub has resolved their incident and Codex cloud tasks are cloning repositories "
          "normally. This incident has been resolved."),
     ]),
    ("file-processing", "Elevated errors affecting file uploads and file processing", "partial_outage",
     {COMPONENT_FILE_UPLOADS: "partial_outage", COMPONENT_API_FILES: "degraded_performance"}, [
         ("investigating", "2026-03-02T15:12:07Z", None,
          "We are seeing elevated errors affecting file uploads and file processing in ChatGPT and "
          "in the Files API. We are investigating."),
         ("identified", "2026-03-02T15:40:45.3Z", None,
          "We have identified the issue as a degraded storage dependency used for file processing. "
          "Large files and spreadsheets are the most affected. A mitigation is in progress."),
         ("identified", "2026-03-02T16:03:12.76Z", None,
          "The mitigation is rolling out. Uploads may still fail intermittently, and files that "
          "uploaded may take longer than usual to be processed."),
         ("monitoring", "2026-03-02T16:25:51.482Z", None,
          "Error rates for file uploads and file processing have returned to normal levels and we "
          "are monitoring.\n\nIf an upload failed during the incident, retry it. Files used with "
          "the [Files API](https://platform.openai.com/docs/api-reference/files \"Files API\") that "
          "uploaded successfully were not affected."),
         ("resolved", "2026-03-02T17:02:00Z", None,
          "This incident has been resolved. File uploads and file processing are operating normally."),
     ]),
]

_IO_COMPONENT_NAMES = {cid: name for cid, name, _ in INCIDENTIO_COMPONENTS}
INCIDENTIO_INCIDENT_IDS: dict[str, str] = {
    key: make_ulid(_t(ups[0][1]), "incident/" + key) for key, *_rest, ups in _IO_SPECS
}
INCIDENT_FILE_EXPIRED = INCIDENTIO_INCIDENT_IDS["file-expired"]
INCIDENT_FILE_PROCESSING = INCIDENTIO_INCIDENT_IDS["file-processing"]
INCIDENT_IMAGE_LATENCY = INCIDENTIO_INCIDENT_IDS["image-latency"]
INCIDENT_CHATGPT_LOGIN = INCIDENTIO_INCIDENT_IDS["chatgpt-login"]
INCIDENT_CODEX_GITHUB = INCIDENTIO_INCIDENT_IDS["codex-github"]


def incidentio_incidents() -> list[ReplayIncident]:
    """Hand-written incident.io-era incidents (ULID ids, Markdown bodies), oldest first.

    Keys in INCIDENTIO_INCIDENT_IDS: file-expired (2025-11-14), image-latency,
    chatgpt-login, codex-github (Markdown link + code fence), file-processing
    (2026-03-02).  file-expired and codex-github have a back-dated first update
    (``at`` earlier than ``posted_at``).
    """
    out = []
    for key, title, impact, comp_impacts, ups in _IO_SPECS:
        iid = INCIDENTIO_INCIDENT_IDS[key]
        updates = []
        for i, (status, at, posted, body) in enumerate(ups):
            at_dt = _t(at)
            posted_dt = _t(posted) if posted else None
            updates.append(ReplayUpdate(status=status, body=body, at=at_dt,
                                        id=make_ulid(posted_dt or at_dt, f"update/{key}/{i}"),
                                        posted_at=posted_dt))
        out.append(ReplayIncident(
            id=iid, title=title, impact=impact,
            components=[(cid, _IO_COMPONENT_NAMES[cid]) for cid in comp_impacts],
            updates=updates, component_impacts=dict(comp_impacts)))
    return out


# --------------------------------------------------------------------------
# Synthetic incidents for benchmarks
# --------------------------------------------------------------------------

_POOL: dict[str, Any] | None = None
_POOL_LOCK = threading.Lock()


def _wording_pool() -> dict[str, Any]:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            hist = load_history("openai")
            titles = [i.title for i in hist]
            bodies: dict[str, list[str]] = {s: [] for s in STATUSES}
            for inc in hist:
                for u in inc.updates:
                    if u.body:
                        bodies[u.status].append(u.body)
            comps = [i.components for i in hist]
            impacts = [i.impact for i in hist if i.impact != "maintenance"]
            _POOL = {"titles": titles, "bodies": bodies, "components": comps, "impacts": impacts}
        return _POOL


_PROGRESSIONS = {
    2: [["investigating", "resolved"], ["identified", "resolved"], ["monitoring", "resolved"]],
    3: [["investigating", "monitoring", "resolved"], ["investigating", "identified", "resolved"],
        ["identified", "monitoring", "resolved"]],
    4: [["investigating", "identified", "monitoring", "resolved"],
        ["investigating", "investigating", "monitoring", "resolved"]],
    5: [["investigating", "identified", "identified", "monitoring", "resolved"],
        ["investigating", "identified", "monitoring", "resolved", "postmortem"]],
}


def synthetic_incidents(n: int, start: datetime, seed: int = 0, *,
                        ids: str = "statuspage") -> list[ReplayIncident]:
    """``n`` plausible incidents starting after ``start``, oldest first, with titles and
    bodies sampled from the real OpenAI history; 2-5 updates each.

    ``ids="statuspage"``: 12-char lowercase ids and history components (API, ChatGPT...);
    ``ids="ulid"``: ULIDs, incident.io impact words and INCIDENTIO_COMPONENTS.
    """
    pool = _wording_pool()
    rng = random.Random(seed)
    start = _as_utc(start)
    titles, bodies, comp_sets, impacts = pool["titles"], pool["bodies"], pool["components"], pool["impacts"]
    io_comps = [(cid, name) for cid, name, _ in INCIDENTIO_COMPONENTS]
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    fractions = (0, 0, 0, 18_000, 660_000, 482_000, 500_000)
    seen: set[str] = set()
    out: list[ReplayIncident] = []
    t = start
    for _ in range(n):
        t = t + timedelta(minutes=rng.randint(20, 600))
        k = rng.choice((2, 2, 3, 3, 3, 4, 4, 5))
        prog = rng.choice(_PROGRESSIONS[k])
        if ids == "ulid":
            iid = make_ulid(t, f"synthetic/{seed}/{len(out)}")
        else:
            iid = "".join(rng.choice(alphabet) for _ in range(12))
            while iid in seen:
                iid = "".join(rng.choice(alphabet) for _ in range(12))
        seen.add(iid)
        updates = []
        at = t
        for j, status in enumerate(prog):
            if j:
                at = at + timedelta(minutes=rng.randint(4, 120) if status != "postmortem" else rng.randint(1440, 5000))
            stamp = at.replace(second=rng.randint(0, 59), microsecond=rng.choice(fractions))
            pool_b = bodies.get(status) or bodies["investigating"]
            uid = make_ulid(stamp, f"{iid}/{j}") if ids == "ulid" else f"{iid}-{j}"
            updates.append(ReplayUpdate(status=status, body=rng.choice(pool_b), at=stamp, id=uid,
                                        label=status.capitalize() if j == 0 or status != prog[j - 1] else "Update"))
        if ids == "ulid":
            comps = rng.sample(io_comps, rng.choice((1, 1, 1, 2)))
            impact = rng.choice(("degraded_performance", "degraded_performance", "partial_outage", "full_outage"))
        else:
            comps = list(rng.choice(comp_sets))
            impact = rng.choice(impacts)
        out.append(ReplayIncident(id=iid, title=rng.choice(titles), impact=impact,
                                  components=comps, updates=updates))
    return out


# --------------------------------------------------------------------------
# Markdown helpers (incident.io bodies)
# --------------------------------------------------------------------------

_MD_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def markdown_to_text(md: str) -> str:
    """incident.io's plain ``message_string``/feed text from a Markdown body."""
    text = _MD_LINK.sub(r"\1", md)
    text = re.sub(r"^```[a-zA-Z0-9_-]*\s*$\n?", "", text, flags=re.M)
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    return text.strip()


def _cdata(s: str) -> str:
    return "<![CDATA[" + s.replace("]]>", "]]]]><![CDATA[>") + "]]>"


# --------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None
    conditional: bool = True  # gets ETag/Last-Modified and may answer 304


def _json_response(obj: Any, last_modified: datetime | None, status: int = 200, **kw: Any) -> Response:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(status, body, "application/json; charset=utf-8", last_modified=last_modified, **kw)


def not_found_html(path: str = "") -> Response:
    body = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Page not found</title>"
            "</head><body><h1>404</h1><p>The page you were looking for doesn't exist.</p>"
            f"<!-- {html.escape(path)} --></body></html>\n").encode()
    return Response(404, body, "text/html; charset=utf-8", conditional=False)


_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


_REQUEST_SCOPE = threading.local()


class _Snapshot:
    """What is visible at one ``now``: computed once per (now, incident list state)."""

    def __init__(self, key: tuple, incidents: list[ReplayIncident], now: datetime):
        self.key = key
        self.vis: dict[int, list[ReplayUpdate]] = {}
        self.visible: list[ReplayIncident] = []
        self.open: list[ReplayIncident] = []
        last = _EPOCH
        for inc in incidents:
            ups = [u for u in inc.updates if u.posted <= now]
            if not ups:
                continue
            self.vis[id(inc)] = ups
            self.visible.append(inc)
            if ups[-1].status not in CLOSED_STATUSES:
                self.open.append(inc)
            newest = max(u.posted for u in ups)
            if newest > last:
                last = newest
        self.last_change = last
        self._by_created: list[ReplayIncident] | None = None
        self._by_start: list[ReplayIncident] | None = None

    def by_created(self) -> list[ReplayIncident]:
        if self._by_created is None:
            self._by_created = sorted(self.visible, key=lambda i: (i.created_at, i.id), reverse=True)
        return self._by_created

    def by_start(self) -> list[ReplayIncident]:
        if self._by_start is None:
            self._by_start = sorted(self.visible, key=lambda i: (i.started_at, i.id), reverse=True)
        return self._by_start


class _Page:
    """Base of the page kinds.  Renders from ``self.incidents`` on every request;
    appending incidents or updates between polls is picked up (the visibility
    cache is keyed on ``now`` and the number of incidents and updates; call
    ``invalidate()`` after editing an existing update's status or times in place)."""

    etags: bool = True
    incidents: list[ReplayIncident]
    public_url: str
    name: str
    _snap: _Snapshot | None = None

    def invalidate(self) -> None:
        self._snap = None

    def snapshot(self, now: datetime) -> _Snapshot:
        scoped = getattr(_REQUEST_SCOPE, "snap", None)
        if scoped is not None and scoped[0] is self and scoped[1].key[0] == now:
            return scoped[1]  # inside handle(): computed once per request
        incs = self.incidents
        key = (now, id(incs), len(incs), sum(len(i.updates) for i in incs))
        snap = self._snap
        if snap is None or snap.key != key:
            snap = _Snapshot(key, incs, now)
            self._snap = snap
        return snap

    def default_now(self) -> datetime:
        latest = max((u.posted for i in self.incidents for u in i.updates), default=None)
        return (latest + timedelta(hours=1)) if latest else datetime.now(UTC).replace(microsecond=0)

    @property
    def host(self) -> str:
        return urlsplit(self.public_url).netloc

    def vis(self, inc: ReplayIncident, now: datetime) -> list[ReplayUpdate]:
        ups = self.snapshot(now).vis.get(id(inc))
        return ups if ups is not None else inc.visible_updates(now)

    def visible(self, now: datetime) -> list[ReplayIncident]:
        return list(self.snapshot(now).visible)

    def open_incidents(self, now: datetime) -> list[ReplayIncident]:
        return list(self.snapshot(now).open)

    def recent(self, now: datetime, limit: int) -> list[ReplayIncident]:
        return self.snapshot(now).by_created()[:limit]

    def last_change(self, now: datetime) -> datetime:
        return self.snapshot(now).last_change

    def handle(self, method: str, path: str, query: str, now: datetime) -> Response | None:
        """Render ``path`` at ``now``; None for an unknown path."""
        _REQUEST_SCOPE.snap = None
        _REQUEST_SCOPE.snap = (self, self.snapshot(now))
        try:
            return self._handle(method, path, query, now)
        finally:
            _REQUEST_SCOPE.snap = None

    def _handle(self, method: str, path: str, query: str, now: datetime) -> Response | None:
        raise NotImplementedError

    def _root_html(self) -> Response:
        body = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(self.name)} Status"
                f"</title></head><body><h1>{html.escape(self.name)} Status</h1></body></html>\n").encode()
        return Response(200, body, "text/html; charset=utf-8", conditional=False)


class StatuspagePage(_Page):
    """An Atlassian Statuspage.

    ``components``: (id, name) or (id, name, group) tuples; default: the
    components named by the incidents, flat.  ``time_zone`` "Etc/UTC" renders
    times with Z; "America/Los_Angeles" with the page's offset, as Atlassian does.
    ``atom_ids="numeric"`` (real: ``tag:host,2005:Incident/21148992``, an internal
    number) or ``"code"`` (``…Incident/<incident id>``).
    """

    kind = "statuspage"

    def __init__(self, incidents: list[ReplayIncident], name: str = "OpenAI", public_url: str | None = None,
                 components: list[tuple] | None = None, *, page_id: str | None = None,
                 time_zone: str = "Etc/UTC", etags: bool = True, feed_limit: int = 25,
                 api_limit: int = 50, atom_ids: str = "numeric"):
        self.incidents = incidents
        self.name = name
        self.public_url = (public_url or f"https://status.{slugify(name).replace('-', '')}.com").rstrip("/")
        self.page_id = page_id or ("jbxzcdv9xc4d" if name == "OpenAI" else
                                   hashlib.sha1(name.encode()).hexdigest()[:12])
        self.tz = PageTimeZone(time_zone)
        self.time_zone = self.tz.name
        self.etags = etags
        self.feed_limit = feed_limit
        self.api_limit = api_limit
        self.atom_ids = atom_ids
        self._components = components

    # -- components ---------------------------------------------------------
    def component_list(self) -> list[tuple[str, str, str | None]]:
        if self._components is not None:
            return [(c[0], c[1], c[2] if len(c) > 2 else None) for c in self._components]
        key = (id(self.incidents), len(self.incidents))
        cached = getattr(self, "_derived_components", None)
        if cached and cached[0] == key:
            return cached[1]
        seen: dict[str, str] = {}
        for inc in sorted(self.incidents, key=lambda i: i.updates[0].at if i.updates else _EPOCH):
            for cid, name in inc.components:
                seen.setdefault(cid, name)
        result = [(cid, name, None) for cid, name in seen.items()]
        self._derived_components = (key, result)
        return result

    def component_states(self, now: datetime) -> dict[str, str]:
        states: dict[str, str] = {}
        for inc in self.open_incidents(now):
            word = sp_component_state(inc.sp_impact())
            for cid, _ in inc.components:
                if inc.component_impacts and cid in inc.component_impacts:
                    word_c = sp_state(io_state(inc.component_impacts[cid]))
                else:
                    word_c = word
                if SP_COMPONENT_SEVERITY.get(word_c, 0) > SP_COMPONENT_SEVERITY.get(states.get(cid, "operational"), 0):
                    states[cid] = word_c
        return states

    def _iso(self, dt: datetime | None) -> str | None:
        return iso_statuspage(dt, self.tz) if dt else None

    def _page_obj(self, now: datetime) -> dict:
        return {"id": self.page_id, "name": self.name, "url": self.public_url,
                "time_zone": self.time_zone, "updated_at": self._iso(self.last_change(now))}

    def _components_json(self, now: datetime) -> list[dict]:
        states = self.component_states(now)
        created = min((i.updates[0].at for i in self.incidents if i.updates), default=_EPOCH)
        touched: dict[str, datetime] = {}
        snap = self.snapshot(now)
        for inc in snap.visible:
            last = snap.vis[id(inc)][-1]
            for cid, _ in inc.components:
                if cid not in touched or last.posted > touched[cid]:
                    touched[cid] = last.posted
        out, groups = [], {}
        pos = 0
        for cid, name, group in self.component_list():
            pos += 1
            gid = None
            if group:
                if group not in groups:
                    gid = "g" + hashlib.sha1(group.encode()).hexdigest()[:11]
                    groups[group] = {"id": gid, "name": group, "status": "operational",
                                     "created_at": self._iso(created), "updated_at": self._iso(created),
                                     "position": pos, "description": None, "showcase": False,
                                     "start_date": None, "group_id": None, "page_id": self.page_id,
                                     "group": True, "only_show_if_degraded": False, "components": []}
                    out.append(groups[group])
                    pos += 1
                gid = groups[group]["id"]
                groups[group]["components"].append(cid)
            out.append({"id": cid, "name": name, "status": states.get(cid, "operational"),
                        "created_at": self._iso(created), "updated_at": self._iso(touched.get(cid, created)),
                        "position": pos, "description": None, "showcase": True, "start_date": None,
                        "group_id": gid, "page_id": self.page_id, "group": False,
                        "only_show_if_degraded": False})
        for g in groups.values():
            worst = max((states.get(c, "operational") for c in g["components"]),
                        key=lambda w: SP_COMPONENT_SEVERITY.get(w, 0), default="operational")
            g["status"] = worst
        return out

    def _status_obj(self, now: datetime) -> dict:
        worst = "none"
        order = ["none", "maintenance", "minor", "major", "critical"]
        for inc in self.open_incidents(now):
            imp = inc.sp_impact()
            if order.index(imp) > order.index(worst):
                worst = imp
        desc = {"none": "All Systems Operational", "minor": "Minor Service Outage",
                "major": "Partial System Outage", "critical": "Major System Outage",
                "maintenance": "Service Under Maintenance"}[worst]
        return {"indicator": worst, "description": desc}

    def incident_json(self, inc: ReplayIncident, now: datetime, states: dict[str, str] | None = None) -> dict:
        states = self.component_states(now) if states is None else states
        vis = self.vis(inc, now)
        comp_status = sp_component_state(inc.sp_impact())
        ups = []
        first_resolved_seen = False
        for idx, u in enumerate(vis):
            affected = None
            if inc.components and idx == 0:
                affected = [{"code": cid, "name": n, "old_status": "operational",
                             "new_status": comp_status} for cid, n in inc.components]
            elif inc.components and u.status == "resolved" and not first_resolved_seen:
                affected = [{"code": cid, "name": n, "old_status": comp_status,
                             "new_status": "operational"} for cid, n in inc.components]
            if u.status == "resolved":
                first_resolved_seen = True
            ups.append({"id": u.id, "status": u.status, "body": u.body, "incident_id": inc.id,
                        "created_at": self._iso(u.posted), "updated_at": self._iso(u.posted),
                        "display_at": self._iso(u.at), "affected_components": affected,
                        "deliver_notifications": True, "custom_tweet": None, "tweet_id": None})
        ups.reverse()
        return {
            "id": inc.id, "name": inc.title, "status": vis[-1].status,
            "created_at": self._iso(inc.created_at), "updated_at": self._iso(vis[-1].posted),
            "monitoring_at": self._iso(inc.first_at("monitoring", now)),
            "resolved_at": self._iso(inc.resolved_at(now)),
            "impact": inc.sp_impact(),
            "shortlink": "https://stspg.io/" + hashlib.sha1(inc.id.encode()).hexdigest()[:9],
            "started_at": self._iso(inc.started_at), "page_id": self.page_id,
            "incident_updates": ups,
            "components": [{"id": cid, "name": n, "status": states.get(cid, "operational"),
                            "page_id": self.page_id, "group_id": None} for cid, n in inc.components],
        }

    def atom_id(self, inc: ReplayIncident) -> str:
        ident = inc.id if self.atom_ids == "code" else str(
            int(hashlib.sha1(inc.id.encode()).hexdigest()[:12], 16) % 10**11)
        return f"tag:{self.host},2005:Incident/{ident}"

    def incident_url(self, inc: ReplayIncident) -> str:
        return f"{self.public_url}/incidents/{inc.public_id}"

    def feed_content(self, inc: ReplayIncident, now: datetime) -> str:
        parts = []
        for u in reversed(self.vis(inc, now)):
            loc, abbr = self.tz.local(u.at)
            label = u.label or u.status.capitalize()
            body = html.escape(u.body, quote=False).replace("\r\n", "\n").replace("\n", "<br />")
            parts.append(f"<p><small>{loc:%b} <var data-var='date'>{loc.day:>2}</var>, "
                         f"<var data-var='time'>{loc:%H:%M}</var> {abbr}</small><br>"
                         f"<strong>{html.escape(label)}</strong> - {body}</p>")
        return "".join(parts)

    def _published(self, inc: ReplayIncident, now: datetime) -> tuple[datetime, datetime]:
        vis = self.vis(inc, now)
        non_pm = [u for u in vis if u.status != "postmortem"] or vis
        return non_pm[-1].posted, vis[-1].posted

    def history_atom(self, now: datetime) -> str:
        entries = self.recent(now, self.feed_limit)
        out = ['<?xml version="1.0" encoding="UTF-8"?>',
               '<feed xml:lang="en-US" xmlns="http://www.w3.org/2005/Atom">',
               f"  <id>tag:{self.host},2005:/history</id>",
               f'  <link rel="alternate" type="text/html" href="{self.public_url}"/>',
               f'  <link rel="self" type="application/atom+xml" href="{self.public_url}/history.atom"/>',
               f"  <title>{xml_escape(self.name)} Status - Incident History</title>",
               f"  <updated>{iso_seconds(self.last_change(now), self.tz)}</updated>",
               "  <author>", f"    <name>{xml_escape(self.name)}</name>", "  </author>"]
        for inc in entries:
            published, updated = self._published(inc, now)
            out += ["  <entry>",
                    f"    <id>{self.atom_id(inc)}</id>",
                    f"    <published>{iso_seconds(published, self.tz)}</published>",
                    f"    <updated>{iso_seconds(updated, self.tz)}</updated>",
                    f'    <link rel="alternate" type="text/html" href="{self.incident_url(inc)}"/>',
                    f"    <title>{xml_escape(inc.title)}</title>",
                    f'    <content type="html">{xml_escape(self.feed_content(inc, now))}</content>',
                    "  </entry>"]
        out.append("</feed>")
        return "\n".join(out) + "\n"

    def history_rss(self, now: datetime) -> str:
        entries = self.recent(now, self.feed_limit)
        out = ['<?xml version="1.0" encoding="UTF-8"?>', '<rss version="2.0">', "  <channel>",
               f"    <title>{xml_escape(self.name)} Status - Incident History</title>",
               f"    <link>{self.public_url}</link>",
               "    <description>Statuspage</description>",
               f"    <pubDate>{rfc822(self.last_change(now), self.tz)}</pubDate>"]
        for inc in entries:
            published, _ = self._published(inc, now)
            url = self.incident_url(inc)
            out += ["    <item>",
                    f"      <title>{xml_escape(inc.title)}</title>",
                    f"      <description>{xml_escape(self.feed_content(inc, now))}</description>",
                    f"      <pubDate>{rfc822(published, self.tz)}</pubDate>",
                    f"      <link>{url}</link>",
                    f"      <guid>{url}</guid>",
                    "    </item>"]
        out += ["  </channel>", "</rss>"]
        return "\n".join(out) + "\n"

    def _handle(self, method: str, path: str, query: str, now: datetime) -> Response | None:
        lm = self.last_change(now)
        if path in ("/", "/history"):
            return self._root_html()
        if path == "/api/v2/summary.json":
            states = self.component_states(now)
            opened = sorted(self.open_incidents(now), key=lambda i: i.created_at, reverse=True)
            return _json_response({
                "page": self._page_obj(now), "components": self._components_json(now),
                "incidents": [self.incident_json(i, now, states) for i in opened],
                "scheduled_maintenances": [], "status": self._status_obj(now)}, lm)
        if path == "/api/v2/status.json":
            return _json_response({"page": self._page_obj(now), "status": self._status_obj(now)}, lm)
        if path == "/api/v2/components.json":
            return _json_response({"page": self._page_obj(now), "components": self._components_json(now)}, lm)
        if path == "/api/v2/incidents.json":
            states = self.component_states(now)
            return _json_response({"page": self._page_obj(now), "incidents": [
                self.incident_json(i, now, states) for i in self.recent(now, self.api_limit)]}, lm)
        if path == "/api/v2/incidents/unresolved.json":
            states = self.component_states(now)
            opened = sorted(self.open_incidents(now), key=lambda i: i.created_at, reverse=True)
            return _json_response({"page": self._page_obj(now), "incidents": [
                self.incident_json(i, now, states) for i in opened]}, lm)
        if path in ("/api/v2/scheduled-maintenances.json", "/api/v2/scheduled-maintenances/upcoming.json",
                    "/api/v2/scheduled-maintenances/active.json"):
            return _json_response({"page": self._page_obj(now), "scheduled_maintenances": []}, lm)
        if path == "/history.atom":
            return Response(200, self.history_atom(now).encode(), "application/atom+xml; charset=utf-8",
                            last_modified=lm)
        if path == "/history.rss":
            return Response(200, self.history_rss(now).encode(), "application/rss+xml; charset=utf-8",
                            last_modified=lm)
        return None


class IncidentIoPage(_Page):
    """An incident.io status page (status.openai.com today).

    ``api_bodies``: "empty" (captures of April 2026), "markdown" (September 2026)
    or "missing" (key absent).  ``api_impact``: "flattened" (none/minor, April 2026)
    or "real" (minor/major/critical, September 2026).  ``window_updates``: the
    window lists ``/proxy/<host>/incidents?start_at&end_at`` carry each entry's
    ``updates`` (as the real page does) or, False, leave them out.  ``live_component_status``: component id -> state
    (either vocabulary), overriding the computed state everywhere (feeds show it
    for every item naming that component).
    """

    kind = "incidentio"

    def __init__(self, incidents: list[ReplayIncident],
                 components: list[tuple[str, str, str]] = INCIDENTIO_COMPONENTS,
                 api_bodies: str = "empty", public_url: str | None = None,
                 live_component_status: dict[str, str] | None = None, *, name: str = "OpenAI",
                 page_id: str = INCIDENTIO_PAGE_ID, etags: bool = False, rotate_summary: bool = True,
                 summary_limit: int = 25, api_limit: int = 25, feed_limit: int = 50,
                 history_limit: int = 90, proxy_window_days: float = 95, api_impact: str = "flattened",
                 window_updates: bool = False):
        if api_bodies not in ("markdown", "empty", "missing"):
            raise ValueError("api_bodies must be markdown, empty or missing")
        if api_impact not in ("flattened", "real"):
            raise ValueError("api_impact must be flattened or real")
        self.api_impact = api_impact
        self.window_updates = window_updates
        self.incidents = incidents
        self.components = list(components)
        self.api_bodies = api_bodies
        self.public_url = (public_url or "https://status.openai.com").rstrip("/")
        self.live_component_status = live_component_status
        self.name = name
        self.page_id = page_id
        self.etags = etags
        self.rotate_summary = rotate_summary
        self.summary_limit = summary_limit
        self.api_limit = api_limit
        self.feed_limit = feed_limit
        self.history_limit = history_limit
        self.proxy_window_days = proxy_window_days
        self._lock = threading.Lock()
        self._summary_calls = 0
        self._last_stamp: datetime | None = None

    # -- state --------------------------------------------------------------
    def component_states(self, now: datetime) -> dict[str, str]:
        """Component id -> incident.io state word, now."""
        states: dict[str, str] = {}
        for inc in self.open_incidents(now):
            for cid, _ in inc.components:
                w = inc.io_impact_for(cid)
                if IO_COMPONENT_SEVERITY.get(w, 0) > IO_COMPONENT_SEVERITY.get(states.get(cid, "operational"), 0):
                    states[cid] = w
        for cid, w in (self.live_component_status or {}).items():
            states[cid] = io_state(w)
        return states

    def incident_url(self, inc: ReplayIncident) -> str:
        return f"{self.public_url}//incidents/{inc.public_id}"  # the double slash is real

    def _restamp(self) -> datetime:
        """Feed generation time: real wall clock, strictly increasing by >= 1 s so
        that every fetch returns different bytes."""
        with self._lock:
            stamp = datetime.now(UTC)
            if self._last_stamp and stamp < self._last_stamp + timedelta(seconds=1):
                stamp = self._last_stamp + timedelta(seconds=1)
            self._last_stamp = stamp
            return stamp

    def _group_of(self) -> dict[str, str]:
        return {cid: grp for cid, _, grp in self.components}

    # -- Statuspage-compatible JSON ----------------------------------------
    def _page_obj(self, now: datetime) -> dict:
        return {"id": self.page_id, "name": self.name, "url": self.public_url + "/",
                "updated_at": iso_go(self.last_change(now))}

    def _status_obj(self, states: dict[str, str]) -> dict:
        worst = max(states.values(), key=lambda w: IO_COMPONENT_SEVERITY.get(w, 0), default="operational")
        return {
            "operational": {"indicator": "none", "description": "All Systems Operational"},
            "under_maintenance": {"indicator": "maintenance", "description": "Service Under Maintenance"},
            "degraded_performance": {"indicator": "minor", "description": "Partial System Degradation"},
            "partial_outage": {"indicator": "minor", "description": "Partial System Outage"},
            "full_outage": {"indicator": "major", "description": "Major System Outage"},
        }.get(worst, {"indicator": "minor", "description": "Partial System Degradation"})

    def _components_json(self, now: datetime, states: dict[str, str]) -> list[dict]:
        stamp = iso_go(self.last_change(now))  # one page-wide stamp
        return [{"id": cid, "name": name, "status": sp_state(states.get(cid, "operational")),
                 "position": pos, "updated_at": stamp}
                for pos, (cid, name, _grp) in enumerate(self.components, 1)]

    def _api_body(self, u: ReplayUpdate) -> dict:
        if self.api_bodies == "missing":
            return {}
        return {"body": u.body if self.api_bodies == "markdown" else ""}

    def incident_json(self, inc: ReplayIncident, now: datetime, index: int = 0) -> dict:
        vis = self.vis(inc, now)
        worst = inc.io_worst_impact()
        obj: dict[str, Any] = {
            "id": inc.id, "name": inc.title, "status": vis[-1].status,
            "impact": ({"degraded_performance": "minor", "partial_outage": "major", "full_outage": "critical"}
                       .get(worst, "none") if self.api_impact == "real" else
                       "none" if worst in ("degraded_performance", "operational") else "minor"),
            "created_at": iso_go(inc.created_at), "updated_at": iso_go(vis[-1].posted),
            "resolved_at": iso_go(r) if (r := inc.resolved_at(now)) else None,
            "incident_updates": [
                {"id": u.id, "status": u.status, **self._api_body(u),
                 "created_at": iso_go(u.posted), "display_at": iso_go(u.at)}
                for u in reversed(vis)],
        }
        if index % 2 == 0:
            obj["components"] = []  # [] or missing, never filled
        return obj

    def _summary_components(self, now: datetime, states: dict[str, str]) -> list[dict]:
        comps = self._components_json(now, states)
        if len(comps) <= self.summary_limit:
            return comps
        with self._lock:
            calls = self._summary_calls
            self._summary_calls += 1
        offset = (calls * 7) % len(comps) if self.rotate_summary else 0
        chosen = (comps[offset:] + comps[:offset])[: self.summary_limit]
        return sorted(chosen, key=lambda c: c["position"])

    # -- feeds --------------------------------------------------------------
    def item_html(self, inc: ReplayIncident, now: datetime, states: dict[str, str]) -> str:
        last = self.vis(inc, now)[-1]
        text = html.escape(markdown_to_text(last.body), quote=False).replace("\n", "<br/>")
        out = f"<b>Status: {last.status.capitalize()}</b><br/><br/>{text}"
        if inc.components:
            items = "".join(f"<li>{html.escape(name, quote=False)} "
                            f"({IO_STATE_LABEL.get(states.get(cid, 'operational'), 'Operational')})</li>"
                            for cid, name in inc.components)
            out += f"<br/><br/><b>Affected components</b><ul>{items}</ul>"
        return out

    def _feed_items(self, now: datetime, limit: int) -> list[ReplayIncident]:
        return self.snapshot(now).by_start()[:limit]

    def rss(self, now: datetime, limit: int, self_path: str) -> str:
        states = self.component_states(now)
        stamp = self._restamp()
        out = ['<?xml version="1.0" encoding="utf-8"?>',
               '<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/" '
               'xmlns:content="http://purl.org/rss/1.0/modules/content/">',
               "    <channel>",
               f"        <title>{xml_escape(self.name)} status</title>",
               f"        <link>{self.public_url}/</link>",
               f"        <description>Stay up to date with the latest incidents and maintenances affecting "
               f"{xml_escape(self.name)}</description>",
               f"        <lastBuildDate>{http_date(stamp)}</lastBuildDate>",
               "        <docs>https://validator.w3.org/feed/docs/rss2.html</docs>",
               "        <generator>incident.io</generator>",
               "        <language>en</language>"]
        for inc in self._feed_items(now, limit):
            url = self.incident_url(inc)
            body = self.item_html(inc, now, states)
            out += ["        <item>",
                    f"            <title>{_cdata(inc.title)}</title>",
                    f"            <link>{url}</link>",
                    f"            <guid>{url}</guid>",
                    f"            <pubDate>{http_date(inc.started_at)}</pubDate>",
                    f"            <description>{_cdata(body)}</description>",
                    f"            <content:encoded>{_cdata(body)}</content:encoded>",
                    "        </item>"]
        out += ["    </channel>", "</rss>"]
        return "\n".join(out)

    def atom(self, now: datetime, limit: int, self_path: str, published: bool) -> str:
        states = self.component_states(now)
        stamp = self._restamp()
        out = ['<?xml version="1.0" encoding="utf-8"?>',
               '<feed xmlns="http://www.w3.org/2005/Atom">',
               f"    <id>{self.public_url}/</id>",
               f"    <title>{xml_escape(self.name)} status</title>",
               f"    <updated>{iso_js(stamp)}</updated>",
               "    <generator>incident.io</generator>",
               f'    <link rel="alternate" href="{self.public_url}/"/>',
               f'    <link rel="self" href="{self.public_url}{self_path}"/>',
               f"    <subtitle>Stay up to date with the latest incidents and maintenances affecting "
               f"{xml_escape(self.name)}</subtitle>"]
        for inc in self._feed_items(now, limit):
            url = self.incident_url(inc)
            last = self.vis(inc, now)[-1]
            out += ["    <entry>",
                    f'        <title type="html">{_cdata(inc.title)}</title>',
                    f"        <id>{url}</id>",
                    f'        <link href="{url}"/>',
                    f"        <updated>{iso_js(last.posted)}</updated>"]
            if published:
                out.append(f"        <published>{iso_js(inc.started_at)}</published>")
            out += [f'        <summary type="html">{_cdata(self.item_html(inc, now, states))}</summary>',
                    "    </entry>"]
        out.append("</feed>")
        return "\n".join(out)

    # -- incident.io's own JSON (/proxy/<host>) -----------------------------
    def _affected(self, inc: ReplayIncident) -> list[dict]:
        groups = self._group_of()
        return [{"id": cid, "name": name, "group_name": groups.get(cid)} for cid, name in inc.components]

    def proxy_list_item(self, inc: ReplayIncident, now: datetime) -> dict:
        vis = self.vis(inc, now)
        item = {"id": inc.id, "name": inc.title, "status": vis[-1].status,
                "published_at": iso_go(inc.started_at), "affected_components": self._affected(inc),
                "current_worst_impact": inc.io_worst_impact(), "last_update_at": iso_go(vis[-1].posted)}
        if self.window_updates:
            item["updates"] = self._proxy_updates(vis)
        return item

    def _proxy_updates(self, vis: list[ReplayUpdate]) -> list[dict]:
        return [{"id": u.id, "to_status": u.status, "message_string": markdown_to_text(u.body),
                 "published_at": iso_go(u.at)} for u in reversed(vis)]

    def proxy_incident(self, inc: ReplayIncident, now: datetime) -> dict:
        vis = self.vis(inc, now)
        end = inc.resolved_at(now)
        return {"incident": {
            "id": inc.id, "name": inc.title, "status": vis[-1].status,
            "published_at": iso_go(inc.started_at),
            "affected_components": self._affected(inc),
            "component_impacts": [
                {"id": make_ulid(inc.started_at, f"impact/{inc.id}/{cid}"), "component_id": cid,
                 "status": inc.io_impact_for(cid), "start_at": iso_go(inc.started_at),
                 "end_at": iso_go(end) if end else None}
                for cid, _ in inc.components],
            "updates": self._proxy_updates(vis),
        }}

    def proxy_summary(self, now: datetime) -> dict:
        states = self.component_states(now)
        groups: dict[str, list] = {}
        for cid, name, grp in self.components:
            groups.setdefault(grp, []).append({"component_id": cid, "name": name, "hidden": False})
        ongoing = sorted(self.open_incidents(now), key=lambda i: i.created_at, reverse=True)
        return {"summary": {
            "id": self.page_id, "name": self.name, "public_url": self.public_url,
            "data_available_since": iso_go(min((i.started_at for i in self.incidents), default=_EPOCH)),
            "components": [{"id": cid, "name": name, "group_id": INCIDENTIO_GROUP_IDS.get(grp)}
                           for cid, name, grp in self.components],
            "affected_components": [{"component_id": cid, "status": w}
                                    for cid, w in states.items() if w != "operational"],
            "ongoing_incidents": [{
                "id": i.id, "name": i.title, "status": self.vis(i, now)[-1].status,
                "current_worst_impact": i.io_worst_impact(),
                "last_update_at": iso_go(self.vis(i, now)[-1].posted),
                "affected_components": self._affected(i)} for i in ongoing],
            "scheduled_maintenances": [],
            "structure": {"items": [
                {"group": {"id": INCIDENTIO_GROUP_IDS.get(g) or make_ulid(_EPOCH, "group/" + g),
                           "name": g, "hidden": False, "components": comps}}
                for g, comps in groups.items()]},
        }}

    def _proxy(self, rest: str, query: str, now: datetime, lm: datetime) -> Response:
        parts = [p for p in rest.split("/") if p]
        if len(parts) == 1:
            return _json_response(self.proxy_summary(now), lm)
        if len(parts) == 2 and parts[1] == "incidents":
            q = parse_qs(query)
            try:
                start = parse_iso(q["start_at"][0])
                end = parse_iso(q["end_at"][0])
            except (KeyError, IndexError, ValueError):
                return _json_response({"type": "validation_error", "status": 400,
                                       "errors": [{"message": "start_at and end_at are required ISO 8601 times"}]},
                                      None, 400, conditional=False)
            if end < start or end - start > timedelta(days=self.proxy_window_days):
                return _json_response({"type": "validation_error", "status": 400,
                                       "errors": [{"message": "window must be at most "
                                                   f"{self.proxy_window_days:g} days"}]},
                                      None, 400, conditional=False)
            chosen = [i for i in self.visible(now) if start <= i.started_at < end]
            chosen.sort(key=lambda i: i.started_at, reverse=True)
            return _json_response({"incidents": [self.proxy_list_item(i, now) for i in chosen]}, lm)
        if len(parts) == 3 and parts[1] == "incidents":
            for inc in self.incidents:
                if parts[2] in (inc.id, inc.public_id) and id(inc) in self.snapshot(now).vis:
                    return _json_response(self.proxy_incident(inc, now), lm)
        return _json_response({"type": "not_found", "status": 404}, None, 404, conditional=False)

    def _handle(self, method: str, path: str, query: str, now: datetime) -> Response | None:
        lm = self.last_change(now)
        if path == "/":
            return self._root_html()
        if path in ("/api/v2/summary.json", "/api/v2/status.json"):
            states = self.component_states(now)
            obj: dict[str, Any] = {"page": self._page_obj(now)}
            if path == "/api/v2/summary.json":
                obj["components"] = self._summary_components(now, states)
                opened = sorted(self.open_incidents(now), key=lambda i: i.created_at, reverse=True)
                if opened:  # omitted, not [], when empty; scheduled_maintenances likewise
                    obj["incidents"] = [self.incident_json(i, now, 0) for i in opened]
            obj["status"] = self._status_obj(states)
            return _json_response(obj, lm)
        if path == "/api/v2/components.json":
            states = self.component_states(now)
            return _json_response({"page": self._page_obj(now),
                                   "components": self._components_json(now, states)}, lm)
        if path == "/api/v2/incidents.json":
            recent = self.recent(now, self.api_limit)
            return _json_response({"page": self._page_obj(now), "incidents": [
                self.incident_json(i, now, k) for k, i in enumerate(recent)]}, lm)
        if path == "/api/v2/incidents/unresolved.json":
            return not_found_html(path)
        if path == "/feed.rss":
            return Response(200, self.rss(now, self.feed_limit, path).encode(),
                            "application/rss+xml; charset=utf-8", last_modified=lm)
        if path == "/history.rss":
            return Response(200, self.rss(now, self.history_limit, path).encode(),
                            "application/rss+xml; charset=utf-8", last_modified=lm)
        if path == "/feed.atom":
            return Response(200, self.atom(now, self.feed_limit, path, published=True).encode(),
                            "application/atom+xml; charset=utf-8", last_modified=lm)
        if path == "/history.atom":
            return Response(200, self.atom(now, self.history_limit, path, published=False).encode(),
                            "application/atom+xml; charset=utf-8", last_modified=lm)
        if path.startswith("/proxy/"):
            return self._proxy(path[len("/proxy/"):], query, now, lm)
        return None


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------

_BOMB_CACHE: dict[int, bytes] = {}
_BOMB_LOCK = threading.Lock()


def gzip_bomb_bytes(size: int = 1 << 30) -> bytes:
    """A valid single-member gzip stream of ``size`` zero bytes (1 GiB -> ~1 MB), built
    from repeated full-flush deflate segments: fast, cached."""
    chunk = 1 << 20
    size = max(chunk * 2, (size // chunk) * chunk)
    with _BOMB_LOCK:
        if size in _BOMB_CACHE:
            return _BOMB_CACHE[size]
        zeros = bytes(chunk)
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
        middle = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
        last = c.compress(zeros) + c.flush(zlib.Z_FINISH)
        n = size // chunk
        crc = 0
        for _ in range(n):
            crc = zlib.crc32(zeros, crc)
        data = (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first + middle * (n - 2) + last
                + struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
        _BOMB_CACHE[size] = data
        return data


def _huge_stream(size: int, chunk: int = 1 << 16) -> Callable[[], Iterable[bytes]]:
    def gen() -> Iterable[bytes]:
        head = b'{"page":{"id":"jbxzcdv9xc4d","name":"OpenAI"},"incidents":['
        filler = (b'{"id":"xxxxxxxxxxxx","name":"' + b"x" * 200 + b'"},') * (chunk // 240 + 1)
        sent = 0
        piece = head
        while sent < size:
            data = piece[: size - sent]
            yield data
            sent += len(data)
            piece = filler[:chunk]
    return gen


@dataclass
class Fault:
    """A scripted misbehaviour for ``srv.faults[path]``.

    ``body=None`` and ``stream=None`` reuse the page's normal response (so
    ``Fault(delay=2)``, ``Fault(trickle=100)`` or ``Fault(truncate=0.5)`` act on
    real content), except with a status >= 300, which gets a small HTML error
    page.  ``status=None`` keeps the page's status.  Header values may
    contain ``{path}`` (the request path with query).  ``repeat=n`` removes the
    fault after n uses.  A Fault is itself a ``callable(handler) -> bool``.
    """

    status: int | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the status line
    hang: bool = False  # accept, never answer until the server stops
    trickle: float | None = None  # bytes per second for the body
    repeat: int | None = None
    truncate: float | int | None = None  # send this fraction (<1) or byte count, declare the full length, close
    stream: Callable[[], Iterable[bytes]] | None = None  # generated body (not held in memory)
    content_length: int | None = None  # declared length for ``stream`` (None: close-delimited)

    # -- ready-made faults --------------------------------------------------
    @staticmethod
    def error(status: int = 500, **kw: Any) -> "Fault":
        reason = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
                  504: "Gateway Timeout"}.get(status, "Error")
        body = (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
                f"<center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n").encode()
        return Fault(status=status, body=body, headers={"Content-Type": "text/html"}, **kw)

    @staticmethod
    def rate_limited(retry_after: int | str = 120, **kw: Any) -> "Fault":
        return Fault(status=429, body=b'{"error":"rate limited"}',
                     headers={"Retry-After": str(retry_after), "Content-Type": "application/json"}, **kw)

    @staticmethod
    def never_answer(**kw: Any) -> "Fault":
        return Fault(hang=True, **kw)

    @staticmethod
    def slow(delay: float, **kw: Any) -> "Fault":
        return Fault(delay=delay, **kw)

    @staticmethod
    def trickling(bytes_per_second: float, **kw: Any) -> "Fault":
        return Fault(trickle=bytes_per_second, **kw)

    @staticmethod
    def html_page(status: int = 200, **kw: Any) -> "Fault":
        body = (b"<!DOCTYPE html><html lang=\"en-US\"><head><title>Just a moment...</title>"
                b"<meta http-equiv=\"refresh\" content=\"390\"></head><body><noscript>Enable JavaScript "
                b"and cookies to continue</noscript></body></html>")
        return Fault(status=status, body=body, headers={"Content-Type": "text/html; charset=UTF-8"}, **kw)

    @staticmethod
    def empty(status: int = 200, content_type: str = "application/json; charset=utf-8", **kw: Any) -> "Fault":
        return Fault(status=status, body=b"", headers={"Content-Type": content_type}, **kw)

    @staticmethod
    def truncated(fraction: float | int = 0.5, **kw: Any) -> "Fault":
        return Fault(truncate=fraction, **kw)

    @staticmethod
    def invalid_utf8(kind: str = "json", **kw: Any) -> "Fault":
        if kind == "json":
            body = b'{"page":{"id":"jbxzcdv9xc4d","name":"Open\xffAI \xc3\x28"},"incidents":[]}'
            ctype = "application/json; charset=utf-8"
        else:
            body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0"><channel><title>Bad \xff\xfe'
                    b'</title><item><title>\xc3\x28 broken</title><guid>x</guid></item></channel></rss>\n')
            ctype = "application/rss+xml; charset=utf-8"
        return Fault(status=200, body=body, headers={"Content-Type": ctype}, **kw)

    @staticmethod
    def huge(size: int = 50 * 1024 * 1024, declare_length: bool = True,
             content_type: str = "application/json; charset=utf-8", **kw: Any) -> "Fault":
        return Fault(status=200, stream=_huge_stream(size), content_length=size if declare_length else None,
                     headers={"Content-Type": content_type}, **kw)

    @staticmethod
    def redirect_loop(status: int = 302, **kw: Any) -> "Fault":
        return Fault(status=status, body=b"", headers={"Location": "{path}"}, **kw)

    @staticmethod
    def gzip_bomb(size: int = 1 << 30, content_type: str = "application/json; charset=utf-8",
                  **kw: Any) -> "Fault":
        return Fault(status=200, body=gzip_bomb_bytes(size),
                     headers={"Content-Encoding": "gzip", "Content-Type": content_type}, **kw)

    # -- behaviour ----------------------------------------------------------
    def __call__(self, h: "_Handler") -> bool:
        srv = h.replay
        if self.hang:
            srv._stop.wait()
            h.close_connection = True
            return True
        if self.delay and srv._stop.wait(self.delay):
            h.close_connection = True
            return True
        modifies = (self.status is not None or self.body is not None or self.stream is not None
                    or self.headers or self.trickle or self.truncate is not None)
        if not modifies:
            return False  # only a delay: let the page answer normally
        if self.body is None and self.stream is None and self.status is not None and self.status >= 300:
            err = Fault.error(self.status)  # Fault(status=503): an error page, not the page's JSON
            status, body, headers = self.status, err.body, {**err.headers, **self.headers}
        elif self.body is None and self.stream is None:
            wire = srv._wire_response(h)
            status = self.status or wire.status
            body = wire.body
            headers = {**wire.headers, **self.headers}
        else:
            status = self.status or 200
            body = self.body
            headers = dict(self.headers)
        headers = {k: str(v).replace("{path}", h.path) for k, v in headers.items()}
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        if self.stream is not None:
            h.emit(status, headers, stream=self.stream(), declared=self.content_length, trickle=self.trickle)
            return True
        assert body is not None
        if self.truncate is not None:
            n = int(len(body) * self.truncate) if isinstance(self.truncate, float) and self.truncate < 1 \
                else int(self.truncate)
            n = max(0, min(n, max(len(body) - 1, 0)))
            h.emit(status, headers, body=body[:n], declared=len(body), trickle=self.trickle, close=True)
            return True
        h.emit(status, headers, body=body, trickle=self.trickle)
        return True


# --------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------


class CaseInsensitiveDict(dict):
    """A dict of request headers with case-insensitive lookups (keys stored lower-case)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()):
        super().__init__()
        for k, v in items:
            k = k.lower()
            super().__setitem__(k, f"{self[k]}, {v}" if k in self else v)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


class RecordedRequest(NamedTuple):
    method: str
    path: str  # with query
    headers: CaseInsensitiveDict


class _Wire(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "replay-status"
    sys_version = ""
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    @property
    def replay(self) -> "ReplayServer":
        return self.server.replay

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    def _dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            r = self.replay
            r._record(self.command, self.path, self.headers)
            fault = r._match_fault(urlsplit(self.path).path)
            if fault is not None and fault(self):
                return
            try:
                wire = r._wire_response(self)
            except Exception:  # a bug in a page: answer 500 and keep it for the test to see
                import traceback
                tb = traceback.format_exc()
                with r._lock:
                    r.errors.append(tb)
                wire = _Wire(500, {"Content-Type": "text/plain; charset=utf-8"}, tb.encode())
            self.emit(wire.status, wire.headers, body=wire.body)
        except (_ClientGone, ConnectionError, TimeoutError, OSError):
            self.close_connection = True

    def emit(self, status: int, headers: dict[str, str], *, body: bytes | None = None,
             stream: Iterable[bytes] | None = None, declared: int | None = None,
             trickle: float | None = None, close: bool = False) -> None:
        """Write a response: ``body`` (Content-Length = ``declared`` or len(body)) or a
        ``stream`` (Content-Length = ``declared``, else close-delimited)."""
        stop = self.replay._stop
        if stream is not None and declared is None:
            close = True
        self.send_response(status)
        explicit_length = any(k.lower() == "content-length" for k in headers)
        for k, v in headers.items():
            if k.lower() == "connection":
                continue
            self.send_header(k, v)
        if not explicit_length and status != 304:
            length = declared if declared is not None else (len(body) if body is not None else None)
            if length is not None:
                self.send_header("Content-Length", str(length))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD" or status in (204, 304):
            self.wfile.flush()
            return
        chunks: Iterable[bytes] = stream if stream is not None else ([body] if body else [])
        try:
            for chunk in chunks:
                if stop.is_set():
                    raise _ClientGone()
                if trickle:
                    step = max(1, int(trickle / 20))
                    for i in range(0, len(chunk), step):
                        self.wfile.write(chunk[i:i + step])
                        self.wfile.flush()
                        if stop.wait(step / trickle):
                            raise _ClientGone()
                else:
                    self.wfile.write(chunk)
            self.wfile.flush()
        finally:
            if close:
                try:
                    self.connection.shutdown(socket.SHUT_WR)
                except OSError:
                    pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    replay: "ReplayServer"

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.replay._lock:
            self.replay._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.replay._lock:
            self.replay._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


def _accepts_gzip(value: str | None) -> bool:
    for part in (value or "").split(","):
        bits = [b.strip() for b in part.split(";")]
        if bits[0].lower() in ("gzip", "x-gzip", "*"):
            q = next((b[2:] for b in bits[1:] if b.startswith("q=")), "1")
            try:
                return float(q) > 0
            except ValueError:
                return True
    return False


class ReplayServer:
    """A real HTTP server on 127.0.0.1 serving ``page`` at the simulated time ``now``.

    Attributes tests may set at any time: ``page``, ``now`` (None -> the page's
    latest update + 1 h), ``gzip`` (compress when the client offers gzip),
    ``faults`` (path or 'prefix*' -> Fault or callable(handler) -> bool).
    ``requests`` records (method, path_with_query, headers) for every request.
    """

    def __init__(self, page: _Page | None = None, *, now: datetime | None = None, gzip: bool = True,
                 host: str = "127.0.0.1", port: int = 0):
        self.page = page
        self._now = _as_utc(now)
        self.gzip = gzip
        self.faults: dict[str, Any] = {}
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []  # tracebacks of pages that failed to render
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[Any] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> "ReplayServer":
        if self._httpd is not None:
            return self
        self._stop.clear()
        httpd = _Server((self._host, self._port), _Handler)
        httpd.replay = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"replay-{httpd.server_address[1]}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd = self._httpd
        if httpd is None:
            return
        self._stop.set()
        httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "ReplayServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- addresses / time ---------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def now(self) -> datetime:
        if self._now is not None:
            return self._now
        if self.page is not None:
            return self.page.default_now()
        return datetime.now(UTC)

    @now.setter
    def now(self, value: datetime | str | None) -> None:
        self._now = _as_utc(value)

    def advance(self, delta: timedelta | None = None, **kw: float) -> datetime:
        self.now = self.now + (delta or timedelta(**kw))
        return self.now

    # -- request log ---------------------------------------------------------
    def _record(self, method: str, path: str, headers: Any) -> None:
        rec = RecordedRequest(method, path, CaseInsensitiveDict(headers.items()))
        with self._lock:
            self.requests.append(rec)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if urlsplit(r.path).path == path]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- faults --------------------------------------------------------------
    def _match_fault(self, path: str) -> Any:
        with self._lock:
            key = path if path in self.faults else None
            if key is None:
                best = -1
                for k in self.faults:
                    if k.endswith("*") and path.startswith(k[:-1]) and len(k) > best:
                        key, best = k, len(k)
            if key is None:
                return None
            fault = self.faults[key]
            rep = getattr(fault, "repeat", None)
            if rep is not None:
                if rep <= 0:
                    del self.faults[key]
                    return None
                if rep == 1:
                    del self.faults[key]
                fault.repeat = rep - 1
            return fault

    # -- rendering -----------------------------------------------------------
    def _wire_response(self, h: _Handler) -> _Wire:
        split = urlsplit(h.path)
        page = self.page
        resp = None
        if page is not None:
            resp = page.handle(h.command, split.path, split.query, self.now)
        if resp is None:
            resp = not_found_html(split.path)
        headers = {"Content-Type": resp.content_type, **resp.headers}
        body = resp.body
        if resp.conditional and resp.status == 200:
            etag = '"' + hashlib.sha1(body).hexdigest()[:20] + '"'
            headers["ETag"] = etag
            headers["Cache-Control"] = "max-age=0, private, must-revalidate"
            if resp.last_modified:
                headers["Last-Modified"] = http_date(resp.last_modified)
            if page is not None and page.etags and self._not_modified(h, etag, resp.last_modified):
                return _Wire(304, {k: v for k, v in headers.items() if k != "Content-Type"}, b"")
        if self.gzip and body and _accepts_gzip(h.headers.get("Accept-Encoding")):
            body = _gzip.compress(body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
        return _Wire(resp.status, headers, body)

    @staticmethod
    def _not_modified(h: _Handler, etag: str, last_modified: datetime | None) -> bool:
        inm = h.headers.get("If-None-Match")
        if inm is not None:
            tags = [t.strip() for t in inm.split(",")]
            return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)
        ims = h.headers.get("If-Modified-Since")
        if ims and last_modified is not None:
            try:
                since = parsedate_to_datetime(ims)
            except (TypeError, ValueError):
                return False
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            return last_modified.replace(microsecond=0) <= since
        return False


__all__ = [
    "ReplayUpdate", "ReplayIncident", "load_history", "incidentio_incidents", "synthetic_incidents",
    "INCIDENTIO_COMPONENTS", "INCIDENTIO_GROUP_IDS", "INCIDENTIO_PAGE_ID", "INCIDENTIO_INCIDENT_IDS",
    "COMPONENT_FILE_UPLOADS", "COMPONENT_API_FILES", "COMPONENT_API_LOGIN", "COMPONENT_CHATGPT_LOGIN",
    "COMPONENT_IMAGE_GENERATION", "COMPONENT_CODEX_WEB", "INCIDENT_FILE_EXPIRED", "INCIDENT_FILE_PROCESSING",
    "INCIDENT_IMAGE_LATENCY", "INCIDENT_CHATGPT_LOGIN", "INCIDENT_CODEX_GITHUB",
    "StatuspagePage", "IncidentIoPage", "ReplayServer", "Fault", "RecordedRequest",
    "parse_status_timestamp", "parse_service", "parse_iso", "markdown_to_text", "make_ulid",
    "gzip_bomb_bytes", "iso_go", "iso_statuspage", "SCRAPE_REFERENCE",
]
