"""The outbox's side of a poll: what a message says (the payload, frozen when the change is decided) and the
rows that queue it for every notifier that wants it, written in the poll's own transaction so that a change
and its message land together (Core on tables.py: the ORM session of the poll is used as a connection); and
whether any message is due, in plain SQL."""
from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Sequence

from monitor.merge import Change, IncidentState
from monitor.records import LOG_NOTIFIER, UPLOAD_TAGS, iso_z as _iso

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class LogNotifier:
    """With no notifier configured, messages go to the log: the default filters, so a first run shows them."""

    name = LOG_NOTIFIER

    def __init__(self, upload_tags: Sequence[str] = UPLOAD_TAGS):
        self.upload_tags = tuple(upload_tags)

    def wants(self, tags: set[str], event: str, impact: str, surfaces: frozenset[str] = frozenset()) -> bool:
        return bool(tags.intersection(self.upload_tags) or surfaces)


def payload(state: IncidentState, event: str, tags: set[str], page_name: str,
            upload_tags: Sequence[str] = UPLOAD_TAGS, surfaces: frozenset[str] = frozenset()) -> dict:
    """What a message says, frozen when it is decided (rendered per channel at delivery). `reopened`: the
    incident was resolved before (a reopening says wait again; its next resolution, resolved again)."""
    last = state.latest_update()
    text_update = next((u for u in reversed(state.updates) if u.body), None)
    return {
        "event": event, "page": page_name, "id": state.page_incident_id, "title": state.title, "url": state.url,
        "status": state.status, "impact": state.impact, "tags": sorted(tags),
        "uploads": bool(tags.intersection(upload_tags)), "reopened": state.reopened,
        "surfaces": sorted(surfaces), "maintenance": state.impact == "maintenance",
        "scheduled_until": _iso(state.scheduled_until),
        "components": [c.name for c in state.components if c.name],
        "started_at": _iso(state.started_at), "resolved_at": _iso(state.resolved_at),
        "update": {"status": last.status if last else None,
                   "body": text_update.body if text_update else "",
                   "published_at": _iso(last.published_at) if last else None},
    }


def queue(session: Session, incident_id: int, page_name: str, ch: Change, tags: set[str], notifiers: Sequence,
          now: datetime, *, upload_tags: Sequence[str] = UPLOAD_TAGS, surfaces: frozenset[str] = frozenset()) -> int:
    """Outbox rows for every notifier that wants this event; a key already queued is never queued again."""
    def body() -> dict:
        p = payload(ch.state, ch.event, tags, page_name, upload_tags, surfaces)
        if ch.event in ("opened", "updated") and ch.state.is_open:     # how long similar incidents went on
            p["estimate"], p["expected_resolution"] = _estimate(session, page_name, ch.state, tags, surfaces, now)
        return p

    return queue_message(session, incident_id=incident_id, key=f"{page_name}:{ch.dedupe_key}", event=ch.event,
                         tags=tags, impact=ch.state.impact, notifiers=notifiers, now=now, upload_tags=upload_tags,
                         surfaces=surfaces, body=body)


def _estimate(session: Session, page_name: str, state: IncidentState, tags: set[str], surfaces: frozenset[str],
              now: datetime) -> tuple[str, dict | None]:
    """The estimate's sentence and JSON for a message, from the page's resolved incidents in this transaction."""
    from monitor.reader import Reader
    from monitor.queries import add_estimates

    d = {"page": page_name, "tags": sorted(tags), "surfaces": sorted(surfaces), "impact": state.impact,
         "components": [c.name for c in state.components if c.name], "started_at": _iso(state.started_at)}
    add_estimates(Reader(connection=session.connection()), [d], now)
    return d["estimate"], d["expected_resolution"]


def queue_message(session: Session, *, incident_id: int | None, key: str, event: str, tags: set[str], impact: str,
                  notifiers: Sequence, now: datetime, body, upload_tags: Sequence[str] = UPLOAD_TAGS,
                  surfaces: frozenset[str] = frozenset()) -> int:
    """Outbox rows under `key` for every notifier that wants (tags, event, impact, broad-outage surfaces), each
    key at most once per notifier (with none configured, the log, which wants `upload_tags` and every watched
    surface); `body()` makes the payload. Returns the number of rows queued."""
    targets = [n.name for n in (notifiers or [LogNotifier(upload_tags)]) if n.wants(tags, event, impact, surfaces)]
    if not targets:
        return 0
    # SQLAlchemy only here, where a change is written: a poll that learns nothing new asks any_due() alone
    from sqlalchemy import insert, select

    from monitor.tables import outbox
    have = set(session.execute(select(outbox.c.notifier).where(outbox.c.dedupe_key == key,
                                                               outbox.c.notifier.in_(targets))).scalars())
    rows = [{"incident_id": incident_id, "notifier": name, "event": event, "dedupe_key": key, "state": "pending",
             "attempts": 0, "created_at": now, "next_attempt_at": now} for name in targets if name not in have]
    if rows:
        text = json.dumps(body(), sort_keys=True)
        session.execute(insert(outbox), [{**r, "payload": text} for r in rows])
    return len(rows)


def any_due(store, now: datetime) -> bool:
    """Whether any message is due (pending, its next attempt now or past), through a db.Store: a poll that
    queued nothing and finds nothing due loads no channel, renderer or apprise (nor SQLAlchemy on SQLite)."""
    return bool(store.run("SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= :now LIMIT 1",
                          {"now": now}, write=False))
