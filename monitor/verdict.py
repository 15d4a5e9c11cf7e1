"""Pure: the one answer users want. Open upload-related incidents plus how fresh our data is become
wait / troubleshoot-locally / unknown, with monitoring-plugin exit codes. Stale data never reads as all-clear."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

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
        return (self.last_success_at is not None
                and now - self.last_success_at < timedelta(seconds=2 * self.poll_interval))


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: str                      # wait | troubleshoot-locally | unknown
    exit_code: int
    reason: str
    incidents: tuple[dict, ...] = ()
    stale: tuple[str, ...] = field(default_factory=tuple)


def decide(open_incidents: list[dict], pages: list[PageHealth], now: datetime) -> Verdict:
    """`open_incidents`: open upload-related incidents (dicts with at least `impact`, `title`)."""
    stale = tuple(p.name for p in pages if not p.fresh(now))
    incidents = tuple(open_incidents)
    if stale:
        why = "; ".join(_stale_reason(p, now) for p in pages if p.name in stale)
        return Verdict("unknown", UNKNOWN, f"no fresh data: {why}", incidents, stale)
    if incidents:
        worst = max((i.get("impact") or "none" for i in incidents), key=("none", "minor", "major", "critical").index)
        code = CRITICAL if worst in ("major", "critical") else WARNING
        n = len(incidents)
        return Verdict("wait", code, f"{n} upload-related incident{'s' * (n != 1)} open (worst impact: {worst})",
                       incidents)
    return Verdict("troubleshoot-locally", OK, "no upload-related incident is open", incidents)


def _stale_reason(p: PageHealth, now: datetime) -> str:
    if p.last_success_at is None:
        base = f"{p.name} has never been polled successfully"
    else:
        age = int((now - p.last_success_at).total_seconds())
        base = f"{p.name} last answered {age} s ago"
    if p.consecutive_failures:
        base += f", {p.consecutive_failures} failed poll(s) in a row"
        if p.last_outcome:
            base += f" ({p.last_outcome})"
    return base
