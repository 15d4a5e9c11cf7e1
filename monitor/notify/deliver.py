"""Delivering the outbox: due rows are rendered per channel and sent, and every attempt is recorded.

Delivery guarantees (``deliver_due``):

* Sending happens outside any database transaction; each row is first *claimed* by one atomic UPDATE
  (only while it is still pending and due; it moves ``next_attempt_at`` ``LEASE_SECONDS`` ahead and sets
  ``leased_by`` to this process), so of any number of processes running ``deliver_due`` at once, exactly
  one sends each row; its outcome is written in another short transaction.
* A row is marked ``sent`` only after its channel accepted the message. A crash between the claim and that
  write leaves the row leased by a dead process: the next leader (a standby taking over, the service
  restarting, a hand-run ``monitor poll`` while no service leads) makes it due at once
  (``LeaderLock.take_over``), otherwise it is due again after ``LEASE_SECONDS``. At-least-once, with at most
  one repeat per crash (a message sent but not yet marked); never a silent loss.
* A failed attempt adds a ``Delivery`` row (the one place errors are recorded; ``Outbox.last_error`` keeps
  the latest) and schedules the next one ``min(retry_max, retry_base * 2**(attempts-1))`` seconds ahead,
  times a random factor in [0.5, 1.0]. A permanent failure (URL apprise cannot load, missing url_env
  variable, notifier no longer configured, message that cannot be rendered), or a failure of a row older
  than ``give_up_after_hours``, sets the row ``failed`` and logs one ERROR line.
* Channels do not wait for each other: rows are grouped by notifier and each group is sent by its own
  worker thread. Within one run, once a channel fails its remaining rows are left pending (not attempted,
  attempts unchanged), while the other channels go on.
"""
from __future__ import annotations

import json
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Mapping

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from monitor.config import ConfigError, NotifierSettings, Settings
from monitor.db import transaction
from monitor.leader import PROCESS_TOKEN
from monitor.models import Delivery, Outbox
from monitor.notify.channels import Channel, LogChannel, SendResult, channel_for, scrub
from monitor.notify.render import render
from monitor.records import LOG_NOTIFIER, backoff, iso_z, now_utc

log = logging.getLogger("monitor.notify")

LEASE_SECONDS = 300          # longer than one send can take (apprise timeouts, SMTP, throttling)
MAX_WORKERS = 8


@dataclass
class DeliveryReport:
    sent: int = 0            # messages accepted by their channel
    failed: int = 0          # failed attempts that will be retried
    gave_up: int = 0         # rows now in state "failed"
    skipped: int = 0         # due rows not attempted: their channel had failed earlier in this run
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + n)

    def __bool__(self) -> bool:
        return bool(self.sent or self.failed or self.gave_up or self.skipped)


# Channels are kept between runs (one apprise object per notifier, reused by the service every poll),
# keyed by the notifier's settings and its URL as resolved now (a changed url_env value makes a new one).
_channels: dict[tuple, Channel] = {}
_channels_lock = threading.Lock()


def configured_channel(ns: NotifierSettings) -> Channel:
    try:
        key = (ns, ns.resolved_url())
    except ConfigError:
        key = (ns, None)
    with _channels_lock:
        ch = _channels.get(key)
        if ch is None:
            for old in [k for k in _channels if k[0].name == ns.name]:
                del _channels[old]
            ch = _channels[key] = channel_for(ns)
        return ch


def _now(now: datetime | None) -> datetime:
    now = now or now_utc()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def backoff_seconds(attempts: int, base: float, cap: float, *, rand=random.random) -> float:
    """Delay after the `attempts`-th failed attempt: min(cap, base * 2**(attempts-1)) * [0.5, 1.0]."""
    raw = backoff(attempts, base, cap)
    return raw * (0.5 + 0.5 * rand())


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    notifier: str
    event: str
    payload: str
    created_at: datetime
    lease_until: datetime | None = None    # the lease this claim set: the fence of its outcome's write


def _claim(engine: Engine, row_id: int, now: datetime) -> _Claimed | None:
    """Lease one row to this process, atomically: one UPDATE that succeeds only while the row is still
    pending and due, so of two processes claiming it at once exactly one gets it. The lease's end (`now` is
    taken afresh for each claim) is this claim's fence: _record writes only while the row still holds it."""
    until = now + timedelta(seconds=LEASE_SECONDS)
    with transaction(engine) as s:
        row = s.execute(update(Outbox)
                        .where(Outbox.id == row_id, Outbox.state == "pending", Outbox.next_attempt_at <= now)
                        .values(next_attempt_at=until, leased_by=PROCESS_TOKEN)
                        .returning(Outbox.id, Outbox.notifier, Outbox.event, Outbox.payload, Outbox.created_at)
                        ).one_or_none()
    return None if row is None else _Claimed(*row, lease_until=until)   # None: sent, given up or leased meanwhile


def _incident_ref(c: _Claimed) -> str:
    try:
        p = json.loads(c.payload)
        return f"{p.get('page')}/{p.get('id')} ({' '.join(str(p.get('title') or '').split())[:80]!r})"
    except (ValueError, AttributeError):
        return f"outbox row {c.id}"


def _record(engine: Engine, c: _Claimed, result: SendResult, settings: Settings, now: datetime,
            report: DeliveryReport) -> bool:
    """Write the outcome of one attempt. Returns True when the row is done (sent or given up)."""
    ns = settings.notify
    error = None if result.ok else scrub(result.error or "unknown error")[:1000]
    with transaction(engine) as s:
        row = s.get(Outbox, c.id, with_for_update=True)
        if row is None:
            return True
        if row.state != "pending" or row.leased_by != PROCESS_TOKEN or (
                c.lease_until is not None and row.next_attempt_at != c.lease_until):
            # the lease ran out and another sender (or a new leader) took the row: its state is theirs now
            log.warning("not recording %s of %s for %s via %s: this process no longer holds the row's lease "
                        "(another sender took it over)", "the delivery" if result.ok else "the failed attempt",
                        c.event, _incident_ref(c), c.notifier)
            return True
        row.attempts = (row.attempts or 0) + 1
        row.leased_by = None
        s.add(Delivery(outbox_id=row.id, at=now, ok=result.ok, permanent=bool(result.permanent and not result.ok),
                       error=error))
        if result.ok:
            row.state, row.sent_at = "sent", now
            report.add("sent")
            log.info("sent %s for %s via %s", c.event, _incident_ref(c), c.notifier)
            return True
        row.last_error = error
        age = now - c.created_at
        if result.permanent or age >= timedelta(hours=ns.give_up_after_hours):
            row.state = "failed"
            report.add("gave_up")
            log.error("giving up on %s for %s via %s after %d attempts: %s", c.event, _incident_ref(c),
                      c.notifier, row.attempts, error)
            return True
        delay = backoff_seconds(row.attempts, ns.retry_base_seconds, ns.retry_max_seconds)
        row.next_attempt_at = now + timedelta(seconds=delay)
        report.add("failed")
        log.warning("sending %s for %s via %s failed (attempt %d), retrying in %d s: %s", c.event,
                    _incident_ref(c), c.notifier, row.attempts, round(delay), error)
        return False


def _attempt(channel: Channel | None, c: _Claimed, settings: Settings, now: datetime) -> SendResult:
    if channel is None:
        return SendResult(False, True, f"notifier {c.notifier!r} is no longer configured")
    try:
        message = render(json.loads(c.payload), channel.format, max_chars=settings.notify.max_text_chars, now=now)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return SendResult(False, True, f"cannot render the message: {type(exc).__name__}: {exc}")
    try:
        return channel.deliver(message)
    except Exception as exc:  # a channel bug is a failed attempt, not a crashed run
        return SendResult(False, False, f"{type(exc).__name__}: {exc}")


def _run_group(engine: Engine, settings: Settings, channel: Channel | None, ids: list[int], now: datetime | None,
               report: DeliveryReport) -> None:
    def fresh() -> datetime:   # the clock afresh for each claim (a throttled channel's group takes minutes)
        return now or now_utc()

    for n, row_id in enumerate(ids):
        c = _claim(engine, row_id, fresh())
        if c is None:
            continue
        result = _attempt(channel, c, settings, fresh())
        _record(engine, c, result, settings, fresh(), report)
        if not result.ok and channel is not None and not result.permanent:
            report.add("skipped", len(ids) - n - 1)     # this channel is down: leave the rest for later
            return


def deliver_due(settings: Settings, engine: Engine, *, now: datetime | None = None,
                channels: Mapping[str, Channel] | None = None, limit: int = 100) -> DeliveryReport:
    """Send every due pending outbox row (oldest first, at most `limit`) through its notifier's channel.

    `channels` maps notifier names to channels, overriding the configured notifiers' own (which are kept
    between calls); the "log" notifier always goes to the log. Counts in the report: `failed` = failed
    attempts that will be retried, `gave_up` = rows set "failed", `skipped` = rows left for a later run
    because their channel had just failed. See the module docstring for the guarantees.
    """
    fixed, now = now, _now(now)     # a caller's `now` (a test's clock) is used as it is for every claim
    report = DeliveryReport()
    with transaction(engine) as s:
        due = s.execute(select(Outbox.id, Outbox.notifier)
                        .where(Outbox.state == "pending", Outbox.next_attempt_at <= now)
                        .order_by(Outbox.created_at, Outbox.id).limit(limit)).all()
    if not due:
        return report
    groups: dict[str, list[int]] = {}
    for row_id, notifier in due:
        groups.setdefault(notifier, []).append(row_id)

    configured = {ns.name: ns for ns in settings.notifiers}

    def channel_of(name: str) -> Channel | None:
        if channels is not None and name in channels:
            return channels[name]
        if name == LOG_NOTIFIER:
            return LogChannel()
        if name in configured:
            return configured_channel(configured[name])
        return None

    jobs = [(channel_of(name), ids) for name, ids in groups.items()]
    if len(jobs) == 1:
        _run_group(engine, settings, jobs[0][0], jobs[0][1], fixed, report)
    else:
        with ThreadPoolExecutor(max_workers=min(len(jobs), MAX_WORKERS),
                                thread_name_prefix="notify") as pool:
            for f in [pool.submit(_run_group, engine, settings, ch, ids, fixed, report) for ch, ids in jobs]:
                f.result()
    if report.failed or report.gave_up or report.skipped:
        log.info("delivery: %d sent, %d failed (will retry), %d given up, %d deferred", report.sent,
                 report.failed, report.gave_up, report.skipped)
    return report


def sample_payload(now: datetime | None = None) -> dict:
    """A made-up open upload incident (wording of the real 2024-05-07 one), for test messages."""
    now = _now(now).replace(microsecond=0)
    at = iso_z(now)
    return {
        "event": "test", "page": "openai", "id": "test",
        "title": "Elevated errors uploading files in ChatGPT (sample incident)",
        "url": "https://status.openai.com/", "status": "investigating", "impact": "minor",
        "tags": ["file-upload"], "components": ["File uploads"], "started_at": at, "resolved_at": None,
        "update": {"status": "investigating", "published_at": at,
                   "body": "We noticed increasing errors during file uploads in ChatGPT. We are currently "
                           "investigating the issue."},
    }


def send_test(settings: Settings, name: str | None = None, *, channels: Mapping[str, Channel] | None = None,
              now: datetime | None = None) -> list[tuple[str, bool, str | None]]:
    """Send a sample message, titled as a test, through each configured notifier (or only `name`; the log
    when none is configured). Returns (notifier, ok, error) per channel. Nothing is stored."""
    if not settings.notifiers or name == LOG_NOTIFIER:
        targets: list[Channel] = [LogChannel()]
    else:
        chosen = [ns for ns in settings.notifiers if name is None or ns.name == name]
        if not chosen:
            raise ConfigError(f"no notifier named {name!r} (configured: "
                              f"{', '.join(ns.name for ns in settings.notifiers)})")
        targets = [channels[ns.name] if channels and ns.name in channels else channel_for(ns) for ns in chosen]
    payload = sample_payload(now)
    out: list[tuple[str, bool, str | None]] = []
    for ch in targets:
        try:
            res = ch.deliver(render(payload, ch.format, max_chars=settings.notify.max_text_chars))
        except Exception as exc:
            res = SendResult(False, False, f"{type(exc).__name__}: {exc}")
        out.append((ch.name, res.ok, None if res.ok else scrub(res.error or "unknown error")))
    return out
