"""Pure: the one answer users want. Open upload-related incidents plus how fresh our data is become
wait / troubleshoot-locally / unknown, with monitoring-plugin exit codes. Stale data never reads as all-clear."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitor.records import worst_impact
from monitor.surfaces import SURFACES, surface_words

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3

CHECKLIST = (
    "Reload the page, or sign out and back in.",
    "Re-upload the original file (an upload from an old chat may have expired).",
    "Start a new chat: the code-execution session behind data analysis ends after a period of inactivity, "
    "so \"file has expired\" on an old conversation is usually local.",
    "Check the file against the upload limits: 512 MB per file, about 50 MB for CSV files and spreadsheets, "
    "20 MB per image.",
    "Try another browser or network; if the same error appears in several new chats, check again in a few minutes.",
)


@dataclass(frozen=True, slots=True)
class PageHealth:
    name: str
    poll_interval: float
    last_success_at: datetime | None
    consecutive_failures: int = 0
    last_outcome: str | None = None

    def fresh(self, now: datetime) -> bool:
        """A good poll younger than two intervals, and no failed poll since: data from before a failure
        never gives an all-clear."""
        return (self.last_success_at is not None and self.consecutive_failures == 0
                and now - self.last_success_at < timedelta(seconds=2 * self.poll_interval))


PROBE_REASON = "unconfirmed: the probe fails, the page says nothing yet"


@dataclass(frozen=True, slots=True)
class ProbeHealth:
    """The probe of the OpenAI Files API as stored: its last result and the outage it is in, if any."""
    interval: float
    failures_to_warn: int
    last_at: datetime | None = None
    last_outcome: str | None = None       # ok | failed
    failure_class: str | None = None      # openai | user | local (of the last result)
    detail: str | None = None
    consecutive_failures: int = 0         # failures on OpenAI's side in a row
    since: datetime | None = None         # the first failure of the outage under way

    def fresh(self, now: datetime) -> bool:
        return self.last_at is not None and now - self.last_at < timedelta(seconds=2 * self.interval)

    def failing(self, now: datetime) -> bool:
        """Failures on OpenAI's side stand: enough of them in a row, the latest one recent."""
        return (self.fresh(now) and self.last_outcome == "failed" and self.failure_class == "openai"
                and self.consecutive_failures >= self.failures_to_warn)


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: str                      # wait | troubleshoot-locally | unknown
    exit_code: int
    reason: str
    incidents: tuple[dict, ...] = ()
    stale: tuple[str, ...] = field(default_factory=tuple)
    scheduled: tuple[dict, ...] = ()  # maintenances only announced: shown, never waited for


def _names(surfaces) -> str:
    order = {s: n for n, s in enumerate(SURFACES)}
    words = [surface_words(s) for s in sorted(surfaces, key=lambda s: (order.get(s, len(order)), s))]
    text = " and ".join(words) if len(words) <= 2 else ", ".join(words[:-1]) + " and " + words[-1]
    return text[:1].upper() + text[1:]


def _maintenance(i: dict) -> bool:
    return i.get("impact") == "maintenance" or i.get("status") in ("in_progress", "verifying")


def broad_state(i: dict) -> str:
    """What a broad outage does to its surfaces: "ChatGPT is down", "ChatGPT and the API are down", or for a
    maintenance under way "The API is under maintenance until 14:00 UTC"."""
    surfaces = i.get("broad") or i.get("surfaces") or []
    verb = "are" if len(surfaces) > 1 else "is"
    if _maintenance(i):
        until = i.get("scheduled_until")
        when = f" until {until[11:16]} UTC" if isinstance(until, str) and len(until) >= 16 else ""
        return f"{_names(surfaces)} {verb} under maintenance{when}"
    return f"{_names(surfaces)} {verb} down"


def broad_words(i: dict) -> str:
    """How a broad outage reads in the verdict's reason: "ChatGPT is down: 'ChatGPT unavailable' (critical)",
    "The API is under maintenance until 14:00 UTC: 'Scheduled database upgrade'"."""
    impact = "" if _maintenance(i) else f" ({i.get('impact')})"
    return f"{broad_state(i)}: '{i.get('title')}'{impact}"


def decide(open_incidents: list[dict], pages: list[PageHealth], now: datetime,
           probe: ProbeHealth | None = None, surface: str | None = None) -> Verdict:
    """`open_incidents`: open incidents that make people wait (dicts with at least `impact`, `title`, `page`,
    `upload` (upload-related) and `broad` (the watched surfaces it takes down broadly)); those with status
    "scheduled" (a maintenance only announced) are shown and never waited for. `surface`: answer for that
    surface only (its broad outages, and upload-related incidents, which fail uploads on any surface).

    An incident on a page with fresh data means "wait", whatever the other pages say. Failures of the probe
    on OpenAI's side (`probe.failing`) mean "wait" too (exit 1) while no incident is open. Otherwise any page
    without fresh data makes the answer "unknown": stale data never reads as all-clear, and an incident
    known only from stale data may be over already (it is still listed)."""
    def counts(i: dict) -> bool:
        broad = [s for s in i.get("broad", ()) if surface is None or s == surface]
        return bool(i.get("upload", True) or broad)

    def for_surface(i: dict) -> dict:
        if surface is None or not i.get("broad"):
            return i
        return {**i, "broad": [s for s in i["broad"] if s == surface]}

    stale = tuple(p.name for p in pages if not p.fresh(now))
    scheduled = tuple(i for i in open_incidents if i.get("status") == "scheduled" and counts(i))
    incidents = tuple(for_surface(i) for i in open_incidents if i.get("status") != "scheduled" and counts(i))
    current = [i for i in incidents if i.get("page") not in stale]
    why_stale = "; ".join(_stale_reason(p, now) for p in pages if p.name in stale)
    if current:
        worst = worst_impact(i.get("impact") for i in current)
        code = CRITICAL if worst in ("major", "critical") else WARNING
        uploads = [i for i in current if i.get("upload", True)]
        broad = [i for i in current if not i.get("upload", True) and i.get("broad")]
        parts = []
        if uploads:
            n = len(uploads)
            parts.append(f"{n} upload-related incident{'s' * (n != 1)} open (worst impact: "
                         f"{worst_impact(i.get('impact') for i in uploads)})")
        if broad:
            parts += [broad_words(i) for i in broad]
            parts.append("uploads fail too")
        reason = "; ".join(parts)
        return Verdict("wait", code, reason + (f"; no fresh data: {why_stale}" if stale else ""), incidents, stale,
                       scheduled)
    if probe is not None and probe.failing(now):
        return Verdict("wait", WARNING, PROBE_REASON + (f"; no fresh data: {why_stale}" if stale else ""),
                       incidents, stale, scheduled)
    if stale:
        return Verdict("unknown", UNKNOWN, f"no fresh data: {why_stale}", incidents, stale, scheduled)
    what = (f"no upload-related incident and no broad outage of {surface_words(surface)} is open" if surface
            else "no upload-related incident and no broad outage is open")
    return Verdict("troubleshoot-locally", OK, what, incidents, scheduled=scheduled)


def age_words(seconds: float) -> str:
    """A short duration or age, rounded down: 42 s, 45 min, 2 h 11 min, 1 d 3 h (messages and status alike)."""
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s} s"
    minutes = s // 60
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 24 * 60:
        h, m = divmod(minutes, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, rest = divmod(minutes, 24 * 60)
    h = rest // 60
    return f"{d} d {h} h" if h else f"{d} d"


def _stale_reason(p: PageHealth, now: datetime) -> str:
    if p.last_success_at is None:
        base = f"{p.name} has never been polled successfully"
    else:
        base = f"{p.name} last answered {age_words((now - p.last_success_at).total_seconds())} ago"
    if p.consecutive_failures:
        base += f", {p.consecutive_failures} failed poll{'s' * (p.consecutive_failures != 1)} in a row"
        if p.last_outcome:
            base += f" ({p.last_outcome})"
    return base
