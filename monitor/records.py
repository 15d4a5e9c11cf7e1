"""What a source says about incidents, before merging: plain frozen values, no database, no HTTP."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

# A maintenance's words (Atlassian): scheduled (announced, nothing happens yet), in_progress and verifying
# (under way: the service may be down), completed (mapped to resolved, like incident.io's "Completed").
MAINTENANCE_STATUSES = ("scheduled", "in_progress", "verifying")
STATUSES = ("investigating", "identified", "monitoring", "resolved", "postmortem") + MAINTENANCE_STATUSES
OPEN_STATUSES = ("investigating", "identified", "monitoring", "in_progress", "verifying")
CLOSED_STATUSES = ("resolved", "postmortem")
UNKNOWN_STATUS = "unknown"     # a status word nobody mapped: never open, never resolved
IMPACTS = ("none", "minor", "major", "critical")     # least to most severe
UPLOAD_TAGS = ("file-upload", "file-expired", "data-analysis")   # the built-in upload-related tags
LOG_NOTIFIER = "log"    # the notifier messages go to when none is configured (a name no notifier may take)


def impact_rank(impact: str | None) -> int:
    """Where an incident impact (one of IMPACTS) ranks; anything else ranks as "none"."""
    return IMPACTS.index(impact) if impact in IMPACTS else 0


def worst_impact(impacts) -> str:
    """The most severe of `impacts` (IMPACTS words), "none" when there is none."""
    return max((i for i in impacts if i in IMPACTS), key=IMPACTS.index, default="none")


def backoff(n: int, base: float, cap: float) -> float:
    """Seconds to wait after the `n`-th failure in a row (n >= 1): base, 2 base, 4 base ... up to `cap`.
    The exponent is capped, so no count of failures overflows."""
    return min(cap, base * 2 ** min(max(n - 1, 0), 64))


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def iso_z(t: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, as every JSON output and message payload writes times."""
    return t.isoformat().replace("+00:00", "Z") if t else None


def short_iso(t: str | None, digits: int = 16) -> str:
    """An iso_z() time for a person: `2024-08-19 18:51` (`digits=19`: with seconds); "-" for none."""
    return t.replace("T", " ")[:digits] if t else "-"


def parse_iso(value) -> datetime | None:
    """ISO 8601 (a Z, an offset or none: UTC; 2- or 3-digit fractions) as aware UTC; None when `value` is
    not such a string."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def cap(s: str, limit: int) -> str:
    """`s` cut to at most `limit` characters, ending in "…" when cut."""
    if limit <= 0 or len(s) <= limit:
        return s
    return s[: max(limit - 1, 0)].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class UpdateRec:
    status: str | None            # one of STATUSES, or None when the source does not say
    body: str                     # plain text or Markdown; "" when the source gave none
    published_at: datetime | None
    source: str                   # "api" | "feed" | "proxy" | ...
    page_update_id: str | None = None


@dataclass(frozen=True, slots=True)
class ComponentRec:
    key: str                      # the page's component id, or the name when the source has no id
    name: str
    impact: str | None = None     # degraded_performance | partial_outage | major_outage | ...; None = affected, unknown how


@dataclass(frozen=True, slots=True)
class IncidentRec:
    page_incident_id: str
    source: str
    title: str = ""
    url: str | None = None
    status: str | None = None
    impact: str | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    resolved_at: datetime | None = None
    updates: tuple[UpdateRec, ...] = ()
    components: tuple[ComponentRec, ...] = ()
    full_timeline: bool = False   # True when `updates` is every update the page has for it
    scheduled_until: datetime | None = None   # a maintenance's planned end


@dataclass(frozen=True, slots=True)
class SourceResult:
    """The parsed content of one source: incidents, and the page's components when the source lists them."""

    incidents: tuple[IncidentRec, ...] = ()
    components: tuple[ComponentRec, ...] = ()
    extra: dict = field(default_factory=dict)
