"""A page's row, as a poll uses it before and after the sources answer: what it reads first (the row, its
sources' validators, the incidents still missing a timeline) and how the poll went (success, failure and
back-off). Plain SQL through db.Store: a poll that learns nothing new reads and writes just these, without
SQLAlchemy on a SQLite store (its import alone costs more than such a poll), through it on PostgreSQL."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.db import Store, stored_time
from monitor.records import backoff

# Plain SQL (the same on SQLite and PostgreSQL): a poll that learns nothing new runs only these.
_KNOWN = ("SELECT p.id, p.kind, p.first_poll_at, p.not_before, p.base_url, p.time_zone, p.consecutive_failures, "
          "p.last_poll_at, s.path, s.etag, s.last_modified, s.body_hash, s.fetched_at, s.last_error "
          "FROM pages p LEFT OUTER JOIN source_states s ON s.page_id = p.id WHERE p.name = :name")
# stored incidents still missing their timeline (incident.io), fetched a few per poll
_CATCH_UP = ("SELECT page_incident_id FROM incidents WHERE page_id = :pid AND timeline_complete = :no "
             "ORDER BY started_at DESC LIMIT :n")
_HEALTHY = ("UPDATE pages SET last_poll_at = :now, last_success_at = :now, consecutive_failures = 0, "
            "not_before = :nb, last_outcome = :outcome WHERE id = :pid")
_FAILED = ("UPDATE pages SET consecutive_failures = consecutive_failures + 1, last_poll_at = :now, "
           "last_outcome = :outcome WHERE id = :pid RETURNING consecutive_failures")
_BACK_OFF = "UPDATE pages SET not_before = :nb WHERE id = :pid"


@dataclass(frozen=True, slots=True)
class SourceValidators:
    """A source's stored validators, as read before a poll (for a timeline: when and why it last failed)."""
    path: str
    etag: str | None
    last_modified: str | None
    body_hash: str | None
    fetched_at: datetime | None
    last_error: str | None = None


def known_page(store: Store, name: str, base_url: str, catch_up: int):
    """The page's row, its sources' validators and the newest `catch_up` incidents still missing a timeline,
    in two short reads: (id, kind, first poll?, not_before, validators by path, catch-up ids, time_zone,
    Hold). None when the row is missing or its base_url changed."""
    def read(execute):
        rows = execute(_KNOWN, {"name": name})
        if not rows or rows[0][4] != base_url:
            return None, []
        return rows, [r[0] for r in execute(_CATCH_UP, {"pid": rows[0][0], "n": catch_up, "no": False})]

    rows, ids = store.transaction(read, write=False)
    if rows is None:
        return None
    pid, kind, first_poll_at, not_before, _, time_zone, failures, last_poll_at = rows[0][:8]
    not_before = stored_time(not_before)
    states = {r[8]: SourceValidators(r[8], r[9], r[10], r[11], stored_time(r[12]), r[13]) for r in rows if r[8]}
    return (pid, kind, first_poll_at is None, not_before, states, ids, time_zone,
            Hold(not_before, failures or 0, stored_time(last_poll_at)))


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a page is not to be polled before `until`: the page's own Retry-After, or our back-off after
    failed polls (record_failure). The two are told apart without storing which: our back-off is exactly
    backoff(failures - 1) after the last poll, and only exists from the second failure on."""
    until: datetime | None
    failures: int
    last_poll_at: datetime | None

    def ours(self, interval: float, cap: float) -> bool:
        if self.until is None or self.failures < 2 or self.last_poll_at is None:
            return False
        wait = self.last_poll_at + timedelta(seconds=backoff(self.failures - 1, interval, cap))
        return self.until <= wait + timedelta(seconds=1)

    def words(self, interval: float, cap: float) -> str:
        if self.ours(interval, cap):
            return f"backing off after {self.failures} failed polls until {self.until:%H:%M:%S} UTC"
        return f"the page asked us to wait until {self.until:%H:%M:%S} UTC"


def record_success(store: Store, page_id: int, now: datetime, not_before: datetime | None, outcome: str) -> None:
    """A poll that learnt nothing new: one UPDATE of the page's health."""
    store.run(_HEALTHY, {"pid": page_id, "now": now, "nb": not_before, "outcome": outcome})


def record_failure(store: Store, page_id: int, now: datetime, outcome: str, interval: float, cap: float,
                   retry_after: datetime | None) -> int:
    """Count a failed poll (in SQL: two processes failing at once both count) and back off (capped, whatever
    the count); nothing else is touched. Returns the failures in a row."""
    def write(execute) -> int:
        fails = execute(_FAILED, {"pid": page_id, "now": now, "outcome": outcome})[0][0]
        wait = now + timedelta(seconds=backoff(fails - 1, interval, cap)) if fails >= 2 else None
        execute(_BACK_OFF, {"pid": page_id, "nb": max((t for t in (wait, retry_after) if t), default=None)})
        return fails

    return store.transaction(write)
