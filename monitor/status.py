"""The answer `monitor status` gives, in one place for every reader of it (the CLI, `monitor diagnose`, the
service's /status.json): read the store, poll the pages whose data is stale, decide, and say it as JSON or
text. Stale data never reads as all-clear; any failure is UNKNOWN (exit 3)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

WORDS = {"wait": "WAIT", "troubleshoot-locally": "TROUBLESHOOT LOCALLY", "unknown": "UNKNOWN"}


@dataclass
class Report:
    """Everything the verdict rests on, as read (and polled) at `now`."""
    verdict: object                      # verdict.Verdict
    health: list = field(default_factory=list)      # verdict.PageHealth per configured page
    polled: list = field(default_factory=list)      # poll.PageResult of the pages polled just now
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class StatusFailure(Exception):
    """The verdict cannot be computed (config, store, file system): the answer is UNKNOWN."""


def read(settings, reader) -> Report:
    """The verdict from the store alone (no polling): what the service's /status.json serves."""
    from monitor import db
    from monitor import history as h
    from monitor.verdict import decide

    with db.transaction(reader) as s:
        incidents, health = h.status_inputs(s, settings)
    now = datetime.now(timezone.utc)
    return Report(decide(incidents, health, now), health, [], now)


def gather(settings_factory, engine_factory, rules_factory) -> Report:
    """The verdict as `monitor status` gives it: from the store when every page's data is fresh, else after
    polling the stale pages once. The factories load the settings, open the store (migrated;
    `engine_factory(readonly=True)`) and build the tag rules, so that their failures are answered too. Raises
    StatusFailure with a one-line reason for anything a config, a store or a file system can cause."""
    from sqlalchemy.exc import SQLAlchemyError

    from monitor import db
    from monitor.config import ConfigError
    from monitor.db import StoreError, safe_error

    try:
        settings = settings_factory()
        reader = engine_factory(readonly=True)
        try:
            report = read(settings, reader)
            stale = [p.name for p in report.health if not p.fresh(report.now)]
            if stale:  # answer from fresh data only: poll the stale pages once first
                import asyncio

                from monitor.poll import poll_all

                writer = db.make_engine(settings.database_url())
                try:
                    polled = asyncio.run(poll_all(settings, writer, rules_factory(), pages=stale))
                finally:
                    writer.dispose()
                report = read(settings, reader)
                report.polled = polled
        finally:
            reader.dispose()
    except (ConfigError, StoreError) as exc:
        raise StatusFailure(str(exc)) from None
    except SQLAlchemyError as exc:
        raise StatusFailure(f"database: {safe_error(exc)}") from None
    except OSError as exc:
        raise StatusFailure(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")) from None
    except Exception as exc:  # noqa: BLE001 - a bug met on odd data: the answer is UNKNOWN, never a traceback
        import logging

        logging.getLogger("monitor.status").exception("cannot compute the verdict")
        raise StatusFailure(f"cannot compute the verdict ({type(exc).__name__}: {exc})") from None
    return report


def failure_json(message: str) -> dict:
    return {"verdict": "unknown", "exit_code": 3, "reason": message, "incidents": [], "checked_at": None,
            "pages": [], "checklist": []}


def to_json(r: Report) -> dict:
    """The `monitor status --json` object."""
    from monitor.records import iso_z
    from monitor.verdict import CHECKLIST

    v, now = r.verdict, r.now
    skipped = {p.page: p.skipped for p in r.polled if p.skipped}
    goods = [p.last_success_at for p in r.health if p.last_success_at]
    return {"verdict": v.verdict, "exit_code": v.exit_code, "reason": v.reason,
            "incidents": list(v.incidents),
            "checked_at": iso_z(min(goods)) if goods else None,   # the oldest data the answer rests on
            "pages": [{"name": p.name, "fresh": p.fresh(now), "last_success_at": iso_z(p.last_success_at),
                       "consecutive_failures": p.consecutive_failures, "last_outcome": p.last_outcome,
                       "polled_now": any(x.page == p.name for x in r.polled),
                       "skipped": skipped.get(p.name)}
                      for p in r.health],
            "checklist": list(CHECKLIST) if v.verdict == "troubleshoot-locally" else []}


def to_text(r: Report) -> str:
    """The `monitor status` text: the verdict line, open incidents, each page's freshness, the checklist."""
    from monitor.verdict import CHECKLIST, age_words

    v, now = r.verdict, r.now
    skipped = {p.page: p.skipped for p in r.polled if p.skipped}
    lines = [f"{WORDS[v.verdict]}: {v.reason}"]
    for i in v.incidents:
        lines.append(f"  - {i['title']}")
        lines.append(f"    {i['status']}, impact {i['impact']}, since {_short(i['started_at'])} UTC"
                     + (f" (page {i['page']}, no fresh data)" if i["page"] in v.stale else ""))
        if i["url"]:
            lines.append(f"    {i['url']}")
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
    if v.verdict == "troubleshoot-locally":
        lines.append("Local checklist:")
        lines += [f"  {n}. {item}" for n, item in enumerate(CHECKLIST, 1)]
    return "\n".join(lines)


def _short(t: str | None) -> str:
    return t.replace("T", " ")[:16] if t else "-"
