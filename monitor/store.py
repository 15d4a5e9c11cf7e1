"""The store side of a poll: what a poll reads first (the page's row, its sources' validators), applying merged
changes (incidents, updates, components, tags, and the outbox rows that say what to tell people, all in the
caller's one transaction, so a change and its message land together), and the page's polling health."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Sequence

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session, selectinload

from monitor.merge import Change, IncidentState
from monitor.models import (
    Component, Incident, IncidentComponent, Outbox, Page, SourceState, Surface, Tag, Update,
)
from monitor.records import ComponentRec, UpdateRec, backoff, iso_z as _iso
from monitor.sources.common import text_key
from monitor.surfaces import DEFAULT_SURFACE_RULES, classify
from monitor.tags import UPLOAD_TAGS, Rule, TagMatch, tag_incident

LOG_NOTIFIER = "log"


class LogNotifier:
    """With no notifier configured, messages go to the log: the default filters, so a first run shows them."""

    name = LOG_NOTIFIER

    def __init__(self, upload_tags: Sequence[str] = UPLOAD_TAGS):
        self.upload_tags = tuple(upload_tags)

    def wants(self, tags: set[str], event: str, impact: str, surfaces: frozenset[str] = frozenset()) -> bool:
        return bool(tags.intersection(self.upload_tags) or surfaces)


def get_page(session: Session, name: str, base_url: str) -> Page:
    page = session.scalar(select(Page).where(Page.name == name))
    if page is None:
        page = Page(name=name, base_url=base_url, consecutive_failures=0)
        session.add(page)
        session.flush()
    elif page.base_url != base_url:
        page.base_url = base_url
    return page


def source_states(session: Session, page_id: int) -> dict[str, SourceState]:
    return {s.path: s for s in session.scalars(select(SourceState).where(SourceState.page_id == page_id))}


def component_names(session: Session, page_id: int) -> dict[str, str]:
    return dict(session.execute(select(Component.key, Component.name).where(Component.page_id == page_id)).all())


def save_components(session: Session, page_id: int, comps: Sequence[ComponentRec]) -> None:
    existing = {c.key: c for c in session.scalars(select(Component).where(Component.page_id == page_id))}
    for c in comps:
        row = existing.get(c.key)
        if row is None:
            session.add(Component(page_id=page_id, key=c.key, name=c.name, status=c.impact))
        elif (row.name, row.status) != (c.name, c.impact):
            row.name, row.status = c.name, c.impact


def to_state(row: Incident) -> IncidentState:
    return IncidentState(
        page_incident_id=row.page_incident_id, title=row.title, url=row.url, status=row.status,
        impact=row.impact, started_at=row.started_at, resolved_at=row.resolved_at,
        updated_at=row.page_updated_at,
        updates=tuple(UpdateRec(status=u.status, body=u.body, published_at=u.published_at, source=u.source,
                                page_update_id=u.page_update_id) for u in row.updates),
        components=tuple(sorted((ComponentRec(key=c.key, name=c.name, impact=c.impact) for c in row.components),
                                key=lambda c: (c.name.lower(), c.key))),
        sources=frozenset(s for s in row.sources.split(",") if s), full_timeline=row.timeline_complete,
        scheduled_until=row.scheduled_until)


def load_incidents(session: Session, page_id: int, ids: Iterable[str]) -> dict[str, Incident]:
    ids = list(set(ids))
    out: dict[str, Incident] = {}
    for i in range(0, len(ids), 500):
        q = (select(Incident).where(Incident.page_id == page_id, Incident.page_incident_id.in_(ids[i:i + 500]))
             .options(selectinload(Incident.updates), selectinload(Incident.components), selectinload(Incident.tags),
                      selectinload(Incident.surfaces)))
        out.update({r.page_incident_id: r for r in session.scalars(q)})
    return out


def evidence_components(state: IncidentState) -> list[str]:
    """Component names that count as tag evidence: affected ones, never a live 'operational' listing."""
    return [c.name for c in state.components if c.name and (c.impact or "").lower() != "operational"]


def compute_tags(rules: Sequence[Rule], state: IncidentState) -> list[TagMatch]:
    return tag_incident(rules, state.title, [u.body for u in state.updates], evidence_components(state))


def compute_surfaces(rules, state: IncidentState) -> list[TagMatch]:
    """The surfaces the incident takes down broadly (monitor.surfaces), each with its evidence."""
    return classify(rules, state.title, [u.body for u in state.updates],
                    [(c.name, c.impact) for c in state.components])


def apply(session: Session, page: Page, changes: Sequence[Change], rows: dict[str, Incident], *,
          rules: Sequence[Rule], notifiers: Sequence, now: datetime, silent_resolved: bool = False,
          silent: bool = False, upload_tags: Sequence[str] = UPLOAD_TAGS,
          surface_rules=DEFAULT_SURFACE_RULES, watched: frozenset[str] = frozenset()) -> int:
    """Write every changed incident and queue its message. Returns the number of outbox rows queued.
    New incidents are inserted in bulk (a first poll or backfill may bring thousands); changed ones go
    through the ORM. A broad outage of a `watched` surface is told like an upload-related incident."""
    def tells(ch: Change) -> bool:
        return bool(ch.event) and not silent and not (
            silent_resolved and ch.event == "resolved" and ch.previous is None)

    changes = [ch for ch in changes if ch.changed]
    tags = {ch.state.page_incident_id: compute_tags(rules, ch.state) for ch in changes}
    surfaces = {ch.state.page_incident_id: compute_surfaces(surface_rules, ch.state) for ch in changes}
    new = [ch for ch in changes if ch.state.page_incident_id not in rows]
    ids = {iid: row.id for iid, row in rows.items()}
    if new:
        with session.no_autoflush:
            ids.update(_insert_new(session, page, new, tags, surfaces, now))
    queued = 0
    for ch in changes:
        iid = ch.state.page_incident_id
        matches = tags[iid]
        if ch.previous is not None:
            _write_incident(rows[iid], ch.state, now)
            write_tags(rows[iid], matches)
            write_surfaces(rows[iid], surfaces[iid])
        if tells(ch):
            broad = frozenset(m.tag for m in surfaces[iid]).intersection(watched)
            queued += queue(session, ids[iid], page.name, ch, {m.tag for m in matches}, notifiers, now,
                            upload_tags=upload_tags, surfaces=broad)
    return queued


def _insert_new(session: Session, page: Page, new: Sequence[Change], tags: dict[str, list[TagMatch]],
                surfaces: dict[str, list[TagMatch]], now: datetime) -> dict[str, int]:
    """Bulk INSERTs for incidents never seen before, their updates, components, tags and surfaces; returns
    their ids."""
    from sqlalchemy import insert

    values = [{"page_id": page.id, "page_incident_id": s.page_incident_id, "title": s.title, "url": s.url,
               "status": s.status, "impact": s.impact, "started_at": s.started_at, "resolved_at": s.resolved_at,
               "page_updated_at": s.updated_at, "first_seen_at": now, "last_seen_at": now,
               "sources": ",".join(sorted(s.sources)), "timeline_complete": s.full_timeline,
               "scheduled_until": s.scheduled_until}
              for s in (ch.state for ch in new)]
    # a plain executemany (with RETURNING each row costs 2.4x as much), then the new ids in one query
    session.execute(insert(Incident.__table__), values)
    q = select(Incident.page_incident_id, Incident.id).where(Incident.page_id == page.id)
    if len(values) <= 500:
        q = q.where(Incident.page_incident_id.in_([v["page_incident_id"] for v in values]))
    ids: dict[str, int] = dict(session.execute(q).all())
    ups, comps, tag_rows, surface_rows = [], [], [], []
    for ch in new:
        iid = ids[ch.state.page_incident_id]
        ups += [{"incident_id": iid, "page_update_id": u.page_update_id, "status": u.status, "body": u.body,
                 "published_at": u.published_at, "source": u.source, "first_seen_at": now} for u in ch.state.updates]
        comps += [{"incident_id": iid, "key": c.key, "name": c.name, "impact": c.impact} for c in ch.state.components]
        tag_rows += [{"incident_id": iid, "tag": m.tag, "rule": m.rule, "field": m.field, "text": m.text}
                     for m in tags[ch.state.page_incident_id]]
        surface_rows += [{"incident_id": iid, "surface": m.tag, "rule": m.rule, "field": m.field, "text": m.text}
                         for m in surfaces[ch.state.page_incident_id]]
    for model, batch in ((Update, ups), (IncidentComponent, comps), (Tag, tag_rows), (Surface, surface_rows)):
        if batch:  # Core executemany on the table: no ORM bookkeeping for rows nobody holds
            session.execute(insert(model.__table__), batch)
    return ids


def _write_incident(row: Incident, s: IncidentState, now: datetime) -> None:
    row.title, row.url, row.status, row.impact = s.title, s.url, s.status, s.impact
    row.started_at, row.resolved_at, row.page_updated_at = s.started_at, s.resolved_at, s.updated_at
    row.sources = ",".join(sorted(s.sources))
    row.timeline_complete = s.full_timeline
    row.scheduled_until = s.scheduled_until
    row.last_seen_at = now
    seen = {(u.status, u.published_at, text_key(u.body)): u.first_seen_at for u in row.updates}
    seen_by_id = {u.page_update_id: u.first_seen_at for u in row.updates if u.page_update_id}
    new_rows = []
    for u in s.updates:
        first = seen_by_id.get(u.page_update_id) or seen.get((u.status, u.published_at, text_key(u.body))) or now
        new_rows.append(Update(page_update_id=u.page_update_id, status=u.status, body=u.body,
                               published_at=u.published_at, source=u.source, first_seen_at=first))
    if [(u.page_update_id, u.status, u.body, u.published_at, u.source) for u in row.updates] != \
            [(u.page_update_id, u.status, u.body, u.published_at, u.source) for u in new_rows]:
        row.updates = new_rows
    comps = {c.key: c for c in row.components}
    wanted = {c.key: c for c in s.components}
    for key in set(comps) - set(wanted):
        row.components.remove(comps[key])
    for key, c in wanted.items():
        if key in comps:
            comps[key].name, comps[key].impact = c.name, c.impact
        else:
            row.components.append(IncidentComponent(key=key, name=c.name, impact=c.impact))


def write_tags(row: Incident, matches: Sequence[TagMatch]) -> None:
    current = {(t.tag, t.rule, t.field, t.text) for t in row.tags}
    if current == {(m.tag, m.rule, m.field, m.text) for m in matches}:
        return
    row.tags = [Tag(tag=m.tag, rule=m.rule, field=m.field, text=m.text) for m in matches]


def write_surfaces(row: Incident, matches: Sequence[TagMatch]) -> None:
    current = {(x.surface, x.rule, x.field, x.text) for x in row.surfaces}
    if current == {(m.tag, m.rule, m.field, m.text) for m in matches}:
        return
    row.surfaces = [Surface(surface=m.tag, rule=m.rule, field=m.field, text=m.text) for m in matches]


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
    from monitor.history import add_estimates

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
    have = set(session.scalars(select(Outbox.notifier).where(Outbox.dedupe_key == key,
                                                              Outbox.notifier.in_(targets))))
    text = json.dumps(body(), sort_keys=True)
    n = 0
    for name in targets:
        if name in have:
            continue
        session.add(Outbox(incident_id=incident_id, notifier=name, event=event, dedupe_key=key, payload=text,
                           state="pending", attempts=0, created_at=now, next_attempt_at=now))
        n += 1
    return n


# ------------------------------------------------------------------------------------------- a poll's rows

# What every poll reads and writes first, built once (statement construction and cache-key generation per call
# cost more than the SQL itself on an unchanged poll)
_KNOWN = (select(Page.id, Page.kind, Page.first_poll_at, Page.not_before, Page.base_url, Page.time_zone,
                 Page.consecutive_failures, Page.last_poll_at,
                 SourceState.path, SourceState.etag, SourceState.last_modified, SourceState.body_hash,
                 SourceState.fetched_at, SourceState.last_error)
          .outerjoin(SourceState, SourceState.page_id == Page.id).where(Page.name == bindparam("name")))
# stored incidents still missing their timeline (incident.io), fetched a few per poll
_CATCH_UP = (select(Incident.page_incident_id)
             .where(Incident.page_id == bindparam("pid"), Incident.timeline_complete.is_(False))
             .order_by(Incident.started_at.desc()).limit(bindparam("n")))
_HEALTHY = (update(Page).where(Page.id == bindparam("pid")).values(
    last_poll_at=bindparam("now"), last_success_at=bindparam("now"), consecutive_failures=0,
    not_before=bindparam("nb"), last_outcome=bindparam("outcome")))


@dataclass(frozen=True, slots=True)
class SourceValidators:
    """A source's stored validators, as read before a poll (for a timeline: when and why it last failed)."""
    path: str
    etag: str | None
    last_modified: str | None
    body_hash: str | None
    fetched_at: datetime | None
    last_error: str | None = None


def known_page(engine, name: str, base_url: str, catch_up: int):
    """The page's row, its sources' validators and the newest `catch_up` incidents still missing a timeline,
    in one short read with Core (no ORM session): (id, kind, first poll?, not_before, validators by path,
    catch-up ids, time_zone, Hold). None when the row is missing or its base_url changed."""
    with engine.begin() as conn:
        rows = conn.execute(_KNOWN, {"name": name}).all()
        if not rows or rows[0].base_url != base_url:
            return None
        r0 = rows[0]
        catch_up = list(conn.execute(_CATCH_UP, {"pid": r0.id, "n": catch_up}).scalars())
    states = {r.path: SourceValidators(r.path, r.etag, r.last_modified, r.body_hash, r.fetched_at, r.last_error)
              for r in rows if r.path}
    return (r0.id, r0.kind, r0.first_poll_at is None, r0.not_before, states, catch_up, r0.time_zone,
            Hold(r0.not_before, r0.consecutive_failures or 0, r0.last_poll_at))


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


def record_success(engine, page_id: int, now: datetime, not_before: datetime | None, outcome: str) -> None:
    """A poll that learnt nothing new: one UPDATE of the page's health."""
    with engine.begin() as conn:
        conn.execute(_HEALTHY, {"pid": page_id, "now": now, "nb": not_before, "outcome": outcome})


def record_failure(engine, page_id: int, now: datetime, outcome: str, interval: float, cap: float,
                   retry_after: datetime | None) -> int:
    """Count a failed poll (in SQL: two processes failing at once both count) and back off (capped, whatever
    the count); nothing else is touched. Returns the failures in a row."""
    with engine.begin() as conn:
        fails = conn.execute(
            update(Page).where(Page.id == page_id)
            .values(consecutive_failures=Page.consecutive_failures + 1, last_poll_at=now, last_outcome=outcome)
            .returning(Page.consecutive_failures)).scalar_one()
        wait = now + timedelta(seconds=backoff(fails - 1, interval, cap)) if fails >= 2 else None
        conn.execute(update(Page).where(Page.id == page_id).values(
            not_before=max((t for t in (wait, retry_after) if t), default=None)))
    return fails


def _state_rows(s: Session, page_id: int, paths: Iterable[str]):
    """(path, its source_states row) for each of `paths`, a new row where there is none yet."""
    current = source_states(s, page_id)
    for path in paths:
        st = current.get(path)
        if st is None:
            st = SourceState(page_id=page_id, path=path)
            s.add(st)
        yield path, st


def save_states(s: Session, page_id: int, new_states: dict[str, tuple], now: datetime) -> None:
    """The validators and body hash of each source that answered with something new."""
    if not new_states:
        return
    for path, st in _state_rows(s, page_id, new_states):
        st.etag, st.last_modified, st.body_hash = new_states[path]
        st.fetched_at = now


def save_timeline_states(s: Session, page_id: int, ok: Iterable[str], failed: dict[str, str],
                         now: datetime) -> None:
    """A failed timeline is remembered (when, and why) to back off; one that answered is forgotten."""
    ok = list(ok)
    if ok:
        s.execute(delete(SourceState).where(SourceState.page_id == page_id, SourceState.path.in_(ok)))
    if failed:
        for path, st in _state_rows(s, page_id, failed):
            st.fetched_at, st.last_error = now, failed[path]
