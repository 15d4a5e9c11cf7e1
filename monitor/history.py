"""Read-side queries behind `monitor history`, `monitor show` and `monitor outbox`: plain dicts, the JSON
contract outside scripts rely on."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from monitor.models import Incident, IncidentComponent, Outbox, Page, Tag
from monitor.records import iso_z as _iso
from monitor.tags import UPLOAD_TAGS


def incident_dict(row: Incident) -> dict:
    """The stable JSON contract of one incident (see README)."""
    return {
        "page": row.page.name, "id": row.page_incident_id, "title": row.title, "url": row.url,
        "status": row.status, "impact": row.impact, "tags": sorted(t.tag for t in row.tags),
        "started_at": _iso(row.started_at), "resolved_at": _iso(row.resolved_at),
        "components": [c.name for c in row.components if c.name],
        "first_seen_at": _iso(row.first_seen_at),
    }


def history(session: Session, *, tags: list[str] | None = None, all_incidents: bool = False,
            since: datetime | None = None, page: str | None = None, limit: int | None = None,
            upload_tags: tuple[str, ...] = UPLOAD_TAGS) -> list[dict]:
    """Incidents newest first; by default only the upload-related ones (`upload_tags`: the settings'
    `upload_tags`, which include the tags the config adds). Plain Core queries: this lists
    tens of thousands of rows, which the ORM would turn into objects for nothing."""
    from sqlalchemy import func

    where = []
    wanted = list(tags or ()) or (None if all_incidents else list(upload_tags))
    if wanted:
        where.append(Incident.id.in_(select(Tag.incident_id).where(Tag.tag.in_(wanted))))
    if since:
        where.append(Incident.started_at >= since)
    if page:
        where.append(Page.name == page)
    q = (select(Incident.id, Page.name, Incident.page_incident_id, Incident.title, Incident.url, Incident.status,
                Incident.impact, Incident.started_at, Incident.resolved_at)
         .join(Page, Page.id == Incident.page_id).where(*where)
         .order_by(Incident.started_at.desc().nulls_last(), Incident.id.desc()))
    rows = session.execute(q.limit(limit) if limit else q).all()
    # the related rows of exactly these incidents: by id when limited, else by the same filter
    chosen = [r[0] for r in rows] if limit else (
        select(Incident.id).join(Page, Page.id == Incident.page_id).where(*where))
    tag_map: dict[int, list[str]] = {}
    for iid, tag in session.execute(select(Tag.incident_id, Tag.tag).where(Tag.incident_id.in_(chosen))
                                    .order_by(Tag.incident_id, Tag.tag)):
        tag_map.setdefault(iid, []).append(tag)
    comp_map: dict[int, list[str]] = {}
    for iid, name in session.execute(
            select(IncidentComponent.incident_id, IncidentComponent.name)
            .where(IncidentComponent.incident_id.in_(chosen)).order_by(IncidentComponent.id)):
        if name:
            comp_map.setdefault(iid, []).append(name)
    sent = dict(session.execute(select(Outbox.incident_id, func.count())
                                .where(Outbox.incident_id.in_(chosen), Outbox.state == "sent")
                                .group_by(Outbox.incident_id)).all())
    return [{"page": pname, "id": pid, "title": title, "url": url, "status": status, "impact": impact,
             "tags": tag_map.get(iid, []), "started_at": _iso(started), "resolved_at": _iso(resolved),
             "components": comp_map.get(iid, []), "messages_sent": sent.get(iid, 0)}
            for iid, pname, pid, title, url, status, impact, started, resolved in rows]


def find_incident(session: Session, incident_id: str, page: str | None = None) -> Incident | None:
    q = select(Incident).join(Incident.page).where(Incident.page_incident_id == incident_id)
    if page:
        q = q.where(Page.name == page)
    return session.scalars(q.options(selectinload(Incident.updates), selectinload(Incident.components),
                                     selectinload(Incident.tags))).first()


def incident_detail(session: Session, row: Incident) -> dict:
    d = incident_dict(row)
    d["last_seen_at"] = _iso(row.last_seen_at)
    d["sources"] = [s for s in row.sources.split(",") if s]
    d["posted_late_by_seconds"] = (
        int((row.first_seen_at - row.started_at).total_seconds()) if row.started_at else None)
    d["components"] = [{"id": c.key, "name": c.name, "impact": c.impact} for c in row.components]
    d["tags"] = [{"tag": t.tag, "rule": t.rule, "field": t.field, "text": t.text}
                 for t in sorted(row.tags, key=lambda t: t.tag)]
    d["updates"] = [{"status": u.status, "published_at": _iso(u.published_at), "source": u.source,
                     "body": u.body} for u in row.updates]
    d["messages"] = [outbox_dict(o) for o in session.scalars(
        select(Outbox).where(Outbox.incident_id == row.id).order_by(Outbox.id))]
    return d


def outbox_dict(o: Outbox) -> dict:
    return {"id": o.id, "notifier": o.notifier, "event": o.event, "state": o.state, "attempts": o.attempts,
            "created_at": _iso(o.created_at), "next_attempt_at": _iso(o.next_attempt_at),
            "sent_at": _iso(o.sent_at), "last_error": o.last_error, "key": o.dedupe_key}


def outbox(session: Session, *, include_sent: bool = False, limit: int = 200) -> list[dict]:
    q = select(Outbox).order_by(Outbox.id.desc()).limit(limit)
    if not include_sent:
        q = q.where(Outbox.state != "sent")
    return [outbox_dict(o) for o in session.scalars(q)]


def pages(session: Session) -> list[Page]:
    return list(session.scalars(select(Page).order_by(Page.name)))



def status_inputs(session: Session, settings) -> tuple[list[dict], list]:
    """Open upload-related incidents and each configured page's polling health, for verdict.decide()."""
    from monitor.records import OPEN_STATUSES
    from monitor.verdict import PageHealth

    names = [p.name for p in settings.pages]
    q = (select(Incident).join(Incident.page)
         .where(Page.name.in_(names), Incident.status.in_(OPEN_STATUSES),
                Incident.id.in_(select(Tag.incident_id).where(Tag.tag.in_(settings.upload_tags))))
         .options(selectinload(Incident.tags), selectinload(Incident.components))
         .order_by(Incident.started_at.desc()))
    incidents = [incident_dict(r) for r in session.scalars(q)]
    stored = {p.name: p for p in pages(session)}
    health = []
    for ps in settings.pages:
        row = stored.get(ps.name)
        health.append(PageHealth(name=ps.name, poll_interval=ps.poll_interval,
                                 last_success_at=row.last_success_at if row else None,
                                 consecutive_failures=row.consecutive_failures if row else 0,
                                 last_outcome=row.last_outcome if row else None))
    return incidents, health
