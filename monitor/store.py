"""The write side of a poll that learnt something: applying merged changes (incidents, updates, components,
tags, surfaces, and the outbox rows that say what to tell people, see notify/outbox.py), all in the caller's
one transaction, so that a change and its message land together; and the validators of the sources that
answered. The page's row before and after a poll is page_state.py's (Core, no ORM)."""
from __future__ import annotations

from datetime import datetime
from typing import Iterable, Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session, selectinload

from monitor.merge import Change, IncidentState
from monitor.models import (
    Component, Incident, IncidentComponent, Page, SourceState, Surface, Tag, Update,
)
from monitor.notify.outbox import queue
from monitor.records import UPLOAD_TAGS, ComponentRec, UpdateRec
from monitor.sources.common import text_key
from monitor.surfaces import DEFAULT_SURFACE_RULES, classify
from monitor.tags import Rule, TagMatch, tag_incident


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
    _write_evidence(row, "tags", Tag, "tag", matches)


def write_surfaces(row: Incident, matches: Sequence[TagMatch]) -> None:
    _write_evidence(row, "surfaces", Surface, "surface", matches)


def _write_evidence(row: Incident, attr: str, model, key: str, matches: Sequence[TagMatch]) -> None:
    """Replace the incident's `attr` rows (tags or surfaces) with `matches`, unless they say the same."""
    if {(getattr(x, key), x.rule, x.field, x.text) for x in getattr(row, attr)} == \
            {(m.tag, m.rule, m.field, m.text) for m in matches}:
        return
    setattr(row, attr, [model(**{key: m.tag}, rule=m.rule, field=m.field, text=m.text) for m in matches])


# ------------------------------------------------------------------------------------------- a poll's rows

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
