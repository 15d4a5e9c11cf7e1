"""The answer `monitor status` gives, in one place for every reader of it (the CLI, `monitor diagnose`, the
service's /status.json): read the store, poll the pages whose data is stale, decide, and say it as JSON or
text. Stale data never reads as all-clear; any failure is UNKNOWN (exit 3)."""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

from monitor import db
from monitor import queries
from monitor.config import ConfigError
from monitor.leader import current_leader
from monitor.reader import Reader
from monitor.records import iso_z, short_iso
from monitor.verdict import CHECKLIST, age_words, broad_state, decide

WORDS = {"wait": "WAIT", "troubleshoot-locally": "TROUBLESHOOT LOCALLY", "unknown": "UNKNOWN"}


@dataclass
class Report:
    """Everything the verdict rests on, as read (and polled) at `now`."""
    verdict: object                      # verdict.Verdict
    health: list = field(default_factory=list)      # verdict.PageHealth per configured page
    polled: list = field(default_factory=list)      # poll.PageResult of the pages polled just now
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    probe: object = None                             # verdict.ProbeHealth, None without [probe]
    leader: dict | None = None           # current_leader(): who polls and delivers, and its last poll
    surface: str | None = None           # the one surface asked about (`status --surface`), else None
    probe_estimate: dict | None = None   # with the probe failing and no incident: how long such waits went on


class StatusFailure(Exception):
    """The verdict cannot be computed (config, store, file system): the answer is UNKNOWN."""


def read(settings, reader, surface: str | None = None) -> Report:
    """The verdict from the store alone (no polling). `reader` is a Reader, or an SQLAlchemy engine."""
    return _decide(settings, reader if isinstance(reader, Reader) else Reader(engine=reader), surface)


def from_session(session, settings) -> Report:
    """The store-only verdict inside a transaction the caller holds (the web page reads more in the same one)."""
    return _decide(settings, Reader(connection=session.connection()))


def _decide(settings, reader, surface: str | None = None) -> Report:
    incidents, health = queries.status_inputs(reader, settings)
    probe = queries.probe_health(reader, settings)
    leader = current_leader(reader)
    now = datetime.now(timezone.utc)
    verdict = decide(incidents, health, now, probe, surface)
    probe_estimate = None
    if verdict.verdict == "wait" and verdict.incidents:   # how long similar incidents went on (monitor.estimate)
        queries.add_estimates(reader, verdict.incidents, now)
    elif verdict.verdict == "wait" and probe is not None and probe.since:
        # the probe's early warning, estimated as an upload incident of the first page
        probe_estimate = {"page": settings.pages[0].name, "tags": ["file-upload"], "impact": None,
                          "started_at": iso_z(probe.since)}
        queries.add_estimates(reader, [probe_estimate], now)
    return Report(verdict, health, [], now, probe, leader, surface, probe_estimate)


def gather(settings_factory, reader_factory, rules_factory, surface: str | None = None) -> Report:
    """The verdict as `monitor status` gives it: from the store when every page's data is fresh, else after
    polling the stale pages once. The factories load the settings, open the store (migrated, as a
    Reader) and build the tag rules, so that their failures are answered too. Raises StatusFailure with a
    one-line reason for anything a config, a store or a file system can cause."""
    try:
        settings = settings_factory()
        reader = reader_factory()
        try:
            if surface is not None and surface not in settings.known_surfaces:
                raise StatusFailure(f"unknown surface {surface!r} (known: {', '.join(settings.known_surfaces)})")
            report = read(settings, reader, surface)
            stale = [p.name for p in report.health if not p.fresh(report.now)]
            cannot = _cannot_poll(settings.database_url()) if stale else None
            if cannot:    # a user who may only read the store: the verdict from what it holds, and why no poll
                from monitor.poll import PageResult     # (poll.py and its HTTP client only when it polls)

                report.polled = [PageResult(page=name, skipped=cannot) for name in stale]
            elif stale:  # answer from fresh data only: poll the stale pages once first
                from monitor.poll import poll_all

                writer = db.make_engine(settings.database_url())
                try:
                    polled = asyncio.run(poll_all(settings, writer, rules_factory(), pages=stale))
                finally:
                    writer.dispose()
                report = read(settings, reader, surface)
                report.polled = polled
        finally:
            reader.close()
    except StatusFailure:
        raise
    except (ConfigError, db.StoreError) as exc:
        raise StatusFailure(str(exc)) from None
    except OSError as exc:
        raise StatusFailure(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")) from None
    except Exception as exc:
        message = db.describe_error(exc)
        if message is None:  # a bug met on odd data: the answer is UNKNOWN, never a traceback
            logging.getLogger("monitor.status").exception("cannot compute the verdict")
            message = f"cannot compute the verdict ({type(exc).__name__}: {exc})"
        raise StatusFailure(message) from None
    return report


def _cannot_poll(url: str) -> str | None:
    """Why this process cannot poll into the store itself (a SQLite store this user may only read), else None."""
    path = db.sqlite_path(url)
    if path is None or db.read_only_mode(path) is None:
        return None
    return (f"this user (uid {os.geteuid()}) may only read the store {path}, so it cannot poll itself; "
            "the service polls")


def failure_json(message: str) -> dict:
    return {"verdict": "unknown", "exit_code": 3, "reason": message, "incidents": [], "scheduled": [],
            "surface": None, "checked_at": None, "pages": [], "checklist": [], "leader": None}


def to_json(r: Report) -> dict:
    """The `monitor status --json` object."""

    v, now = r.verdict, r.now
    skipped = {p.page: p.skipped for p in r.polled if p.skipped}
    goods = [p.last_success_at for p in r.health if p.last_success_at]
    out = {"verdict": v.verdict, "exit_code": v.exit_code, "reason": v.reason,
           "incidents": list(v.incidents), "scheduled": list(v.scheduled), "surface": r.surface,
           "checked_at": iso_z(min(goods)) if goods else None,   # the oldest data the answer rests on
           "pages": [{"name": p.name, "fresh": p.fresh(now), "last_success_at": iso_z(p.last_success_at),
                      "consecutive_failures": p.consecutive_failures, "last_outcome": p.last_outcome,
                      "polled_now": any(x.page == p.name and not x.skipped for x in r.polled),
                      "skipped": skipped.get(p.name)}
                     for p in r.health],
           "checklist": list(CHECKLIST) if v.verdict == "troubleshoot-locally" else [],
           "leader": r.leader}
    if r.probe is not None:     # only with [probe] configured
        out["probe"] = _probe_json(r.probe, now)
        out["probe"]["expected_resolution"] = r.probe_estimate["expected_resolution"] if r.probe_estimate else None
    return out


def _probe_json(p, now: datetime) -> dict:
    return {"last_outcome": p.last_outcome, "last_at": iso_z(p.last_at), "fresh": p.fresh(now),
            "failure_class": p.failure_class, "detail": p.detail, "since": iso_z(p.since),
            "consecutive_failures": p.consecutive_failures, "failing": p.failing(now)}


def _probe_text(p, now: datetime) -> str:
    if p.last_at is None:
        return "Probe (Files API): no result yet"
    age = age_words((now - p.last_at).total_seconds())
    head = f"Probe (Files API): {'fresh' if p.fresh(now) else 'STALE'}, last probe {age} ago"
    if p.last_outcome == "ok":
        return f"{head}: uploads work"
    n = p.consecutive_failures
    since = f", failing since {p.since:%Y-%m-%d %H:%M} UTC" if p.since and n else ""
    whose = {"openai": f"OpenAI's side ({n} in a row{since})",
             "user": "our side (the key, quota or request): not an outage",
             "local": "our own network (the status page does not answer either): not an outage"}
    return f"{head}: FAILING on {whose.get(p.failure_class, p.failure_class)}: {p.detail}"


def to_text(r: Report, checklist: bool = True) -> str:
    """The `monitor status` text: the verdict line, open incidents, each page's freshness, the checklist
    (`checklist=False`: without it, for a reader with more specific advice)."""

    v, now = r.verdict, r.now
    skipped = {p.page: p.skipped for p in r.polled if p.skipped}
    lines = [f"{WORDS[v.verdict]}: {v.reason}"]
    estimates = [i for i in v.incidents if i.get("estimate")]
    for i in estimates:   # how long similar incidents went on, right under the reason
        lines.append(i["estimate"] if len(estimates) == 1 else f"{i['title']}: {i['estimate']}")
    if r.probe_estimate:
        lines.append(r.probe_estimate["estimate"])
    for i in v.incidents:
        lines.append(f"  - {i['title']}")
        lines.append(f"    {i['status']}, impact {i['impact']}, since {short_iso(i['started_at'])} UTC"
                     + (f" (page {i['page']}, no fresh data)" if i["page"] in v.stale else ""))
        if i.get("broad") and not i.get("upload", True):
            lines.append(f"    {broad_state(i)}: OpenAI's side, not a local problem")
        if i["url"]:
            lines.append(f"    {i['url']}")
    for i in v.scheduled:
        lines.append(f"Scheduled maintenance (no reason to wait yet): {i['title']} (page {i['page']}"
                     + (f", until {short_iso(i['scheduled_until'])} UTC" if i.get("scheduled_until") else "") + ")")
    for p in r.health:
        if p.last_success_at:
            age = age_words((now - p.last_success_at).total_seconds())
            when = f"last good poll {p.last_success_at:%Y-%m-%d %H:%M:%S} UTC ({age} ago)"
        else:
            when = "never polled successfully"
        state = "fresh" if p.fresh(now) else "STALE"
        line = f"Source {p.name}: {state}, {when}"
        if p.consecutive_failures:
            n = p.consecutive_failures
            line += f"; FAILING: {n} poll{'s' * (n != 1)} in a row failed, last: {p.last_outcome or '?'}"
        elif p.last_outcome:
            line += f"; last poll: {p.last_outcome}"
        if p.name in skipped:
            line += f"; not polled now: {skipped[p.name]}"
        lines.append(line)
    if r.leader:
        ld = r.leader
        polled = f"{short_iso(ld['last_poll_at'], 19)} UTC" if ld["last_poll_at"] else "none yet"
        lines.append(f"Leader: {ld['host']} pid {ld['pid']} since {short_iso(ld['since'], 19)} UTC, "
                     f"last poll {polled}")
    if r.probe is not None:
        lines.append(_probe_text(r.probe, now))
    if checklist and v.verdict == "troubleshoot-locally":
        lines.append("Local checklist:")
        lines += [f"  {n}. {item}" for n, item in enumerate(CHECKLIST, 1)]
    return "\n".join(lines)
