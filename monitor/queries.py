"""The read model: what `monitor history`, `show`, `outbox` and `status` (and the page and /metrics) read
from the store, as plain dicts (the JSON contract outside scripts rely on): past incidents, one incident,
the outbox, the verdict's inputs, the probe's health, and the cases an estimate of how long to wait is
drawn from. Plain SQL through a reader.Reader, except the ORM reads of `show` and `outbox`."""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from monitor.estimate import Case, estimate, keys_of, sentence, to_json
from monitor.reader import Reader, in_list
from monitor.records import OPEN_STATUSES, UPLOAD_TAGS, iso_z as _iso, parse_iso
from monitor.verdict import PageHealth, ProbeHealth

if TYPE_CHECKING:  # the ORM is imported only by the commands that show one incident or the outbox
    from sqlalchemy.orm import Session

    from monitor.models import Incident, Outbox


def incident_dict(row: Incident) -> dict:
    """The stable JSON contract of one incident (see README)."""
    return {
        "page": row.page.name, "id": row.page_incident_id, "title": row.title, "url": row.url,
        "status": row.status, "impact": row.impact, "tags": sorted(t.tag for t in row.tags),
        "surfaces": sorted(x.surface for x in row.surfaces),
        "started_at": _iso(row.started_at), "resolved_at": _iso(row.resolved_at),
        "components": [c.name for c in row.components if c.name],
        "first_seen_at": _iso(row.first_seen_at),
    }


def history(reader: Reader, *, tags: list[str] | None = None, all_incidents: bool = False,
            since: datetime | None = None, page: str | None = None, limit: int | None = None,
            upload_tags: tuple[str, ...] = UPLOAD_TAGS, broad: bool = False) -> list[dict]:
    """Incidents newest first; by default only the upload-related ones (`upload_tags`: the settings'
    `upload_tags`, which include the tags the config adds), with `broad` also the broad outages of any
    surface. Plain SQL through a Reader: this lists tens of thousands of rows, which the ORM would turn
    into objects for nothing."""
    where, params = [], {}
    wanted = list(tags or ()) or (None if all_incidents else list(upload_tags))
    if wanted:
        tag_in, p = in_list("tag", wanted)
        cond = f"i.id IN (SELECT incident_id FROM tags WHERE tag IN {tag_in})"
        if broad and not tags:
            cond = f"({cond} OR i.id IN (SELECT incident_id FROM surfaces))"
        where.append(cond)
        params.update(p)
    if since:
        where.append("i.started_at >= :since")
        params["since"] = since
    if page:
        where.append("p.name = :page")
        params["page"] = page
    chosen = ("SELECT i.id FROM incidents i JOIN pages p ON p.id = i.page_id"
              + (" WHERE " + " AND ".join(where) if where else ""))
    q = (_INCIDENT_COLUMNS + chosen.removeprefix("SELECT i.id")
         + " ORDER BY i.started_at DESC NULLS LAST, i.id DESC" + (" LIMIT :limit" if limit else ""))
    with reader:
        rows = reader.rows(q, {**params, "limit": limit} if limit else params)
        if limit:  # the related rows of exactly these incidents: by id when limited, else by the same filter
            chosen, params = in_list("id", [r[0] for r in rows])
        else:
            chosen = f"({chosen})"
        tag_map, comp_map, surf_map = _related(reader, chosen, params)
        sent = dict(reader.rows(f"SELECT incident_id, count(*) FROM outbox WHERE incident_id IN {chosen} "
                                "AND state = 'sent' GROUP BY incident_id", params))
        outages = _probe_outages(reader)
    out = []
    for r in rows:
        d = _incident(reader, r, tag_map, comp_map, surf_map)
        d["messages_sent"] = sent.get(r[0], 0)
        d.update(probe_lead(outages, reader.time(r[7]), reader.time(r[9])))    # started_at, first_seen_at
        out.append(d)
    return out


# The columns _incident() reads, in its order.
_INCIDENT_COLUMNS = ("SELECT i.id, p.name, i.page_incident_id, i.title, i.url, i.status, i.impact, i.started_at, "
                     "i.resolved_at, i.first_seen_at, i.scheduled_until")


def _incident(reader: Reader, row: tuple, tag_map: dict, comp_map: dict, surf_map: dict) -> dict:
    """One row of _INCIDENT_COLUMNS as the JSON contract words it (as incident_dict() does for an ORM row,
    without first_seen_at, which only some readers add)."""
    iid, pname, pid, title, url, status, impact, started, resolved, _first_seen, _until = row
    return {"page": pname, "id": pid, "title": title, "url": url, "status": status, "impact": impact,
            "tags": tag_map.get(iid, []), "surfaces": surf_map.get(iid, []), "started_at": reader.iso(started),
            "resolved_at": reader.iso(resolved), "components": comp_map.get(iid, [])}


def _related(reader: Reader, chosen: str, params: dict) -> tuple[dict, dict, dict]:
    """Incident id -> its tags (sorted), its components' names and its broad-outage surfaces (sorted), for the
    incidents of the SQL list or subquery `chosen` (inside the caller's `with reader`)."""
    tag_map: dict[int, list[str]] = {}
    for iid, tag in reader.rows(f"SELECT incident_id, tag FROM tags WHERE incident_id IN {chosen} "
                                "ORDER BY incident_id, tag", params):
        tag_map.setdefault(iid, []).append(tag)
    comp_map: dict[int, list[str]] = {}
    for iid, name in reader.rows("SELECT incident_id, name FROM incident_components "
                                 f"WHERE incident_id IN {chosen} ORDER BY id", params):
        if name:
            comp_map.setdefault(iid, []).append(name)
    surf_map: dict[int, list[str]] = {}
    for iid, surface in reader.rows(f"SELECT incident_id, surface FROM surfaces WHERE incident_id IN {chosen} "
                                    "ORDER BY incident_id, surface", params):
        surf_map.setdefault(iid, []).append(surface)
    return tag_map, comp_map, surf_map


def _probe_outages(reader: Reader) -> list[tuple[datetime, datetime | None]]:
    """(first failure, end) of every outage the probe saw, oldest first (inside the caller's `with reader`)."""
    return [(reader.time(first), reader.time(end)) for first, end in reader.rows(
        "SELECT first_failure_at, ended_at FROM probe_outages ORDER BY first_failure_at")]


def probe_lead(outages, started_at: datetime | None, first_seen_at: datetime) -> dict:
    """How much earlier the probe knew: the first failure of the probe outage under way when the page's
    incident began or when we first saw it posted (None when the probe saw nothing), and the seconds from it
    to the moment this monitor first saw the incident on the page."""
    begin = min(started_at, first_seen_at) if started_at else first_seen_at
    first = next((f for f, end in outages if f <= first_seen_at and (end is None or end >= begin)), None)
    return {"probe_first_failure_at": _iso(first),
            "probe_lead_seconds": int((first_seen_at - first).total_seconds()) if first else None}


def find_incident(session: Session, incident_id: str, page: str | None = None) -> Incident | None:
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from monitor.models import Incident, Page

    q = select(Incident).join(Incident.page).where(Incident.page_incident_id == incident_id)
    if page:
        q = q.where(Page.name == page)
    return session.scalars(q.options(selectinload(Incident.updates), selectinload(Incident.components),
                                     selectinload(Incident.tags), selectinload(Incident.surfaces))).first()


def incident_detail(session: Session, row: Incident) -> dict:
    from sqlalchemy import select

    from monitor.models import Outbox

    d = incident_dict(row)
    d["last_seen_at"] = _iso(row.last_seen_at)
    d["sources"] = [s for s in row.sources.split(",") if s]
    d["posted_late_by_seconds"] = (
        int((row.first_seen_at - row.started_at).total_seconds()) if row.started_at else None)
    reader = Reader(connection=session.connection())
    d.update(probe_lead(_probe_outages(reader), row.started_at, row.first_seen_at))
    d["components"] = [{"id": c.key, "name": c.name, "impact": c.impact} for c in row.components]
    d["tags"] = [{"tag": t.tag, "rule": t.rule, "field": t.field, "text": t.text}
                 for t in sorted(row.tags, key=lambda t: t.tag)]
    d["surfaces"] = [{"surface": x.surface, "rule": x.rule, "field": x.field, "text": x.text}
                     for x in sorted(row.surfaces, key=lambda x: x.surface)]
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
    from sqlalchemy import select

    from monitor.models import Outbox

    q = select(Outbox).order_by(Outbox.id.desc()).limit(limit)
    if not include_sent:
        q = q.where(Outbox.state != "sent")
    return [outbox_dict(o) for o in session.scalars(q)]


def status_inputs(reader: Reader, settings) -> tuple[list[dict], list]:
    """Open incidents that make the verdict wait (upload-related, or a broad outage of a surface the page
    watches) and each configured page's polling health, for verdict.decide(): the incidents as
    incident_dict() words them, with `broad` (the watched surfaces it takes down) and `upload` (whether it is
    upload-related), in a few plain queries through a Reader."""
    names, p_names = in_list("name", [p.name for p in settings.pages])
    statuses, p_statuses = in_list("status", OPEN_STATUSES + ("scheduled",))   # scheduled: shown, never waited for
    tags, p_tags = in_list("tag", settings.upload_tags)
    params = {**p_names, **p_statuses, **p_tags}
    chosen = (f"SELECT i.id FROM incidents i JOIN pages p ON p.id = i.page_id WHERE p.name IN {names} "
              f"AND i.status IN {statuses} AND (i.id IN (SELECT incident_id FROM tags WHERE tag IN {tags}) "
              "OR i.id IN (SELECT incident_id FROM surfaces))")
    with reader:
        rows = reader.rows(_INCIDENT_COLUMNS + chosen.removeprefix("SELECT i.id") + " ORDER BY i.started_at DESC",
                           params)
        tag_map, comp_map, surf_map = _related(reader, f"({chosen})", params)
        stored = {r[0]: r[1:] for r in reader.rows(
            "SELECT name, last_success_at, consecutive_failures, last_outcome FROM pages "
            f"WHERE name IN {names}", p_names)}
    incidents = []
    upload = set(settings.upload_tags)
    for r in rows:
        d = {**_incident(reader, r, tag_map, comp_map, surf_map), "first_seen_at": reader.iso(r[9]),
             "scheduled_until": reader.iso(r[10])}
        d["upload"] = bool(upload.intersection(d["tags"]))
        d["broad"] = sorted(settings.watched_surfaces(d["page"]).intersection(d["surfaces"]))
        if d["upload"] or d["broad"]:
            incidents.append(d)
    health = []
    for ps in settings.pages:
        last_success, failures, outcome = stored.get(ps.name, (None, 0, None))
        health.append(PageHealth(name=ps.name, poll_interval=ps.poll_interval,
                                 last_success_at=reader.time(last_success), consecutive_failures=failures or 0,
                                 last_outcome=outcome))
    return incidents, health


def probe_health(reader: Reader, settings):
    """The probe's last result and the outage under way, for verdict.decide(); None without `[probe]`."""
    ps = settings.probe
    if ps is None:
        return None
    with reader:
        last = reader.rows("SELECT finished_at, outcome, failure_class, detail FROM probe_results "
                           "ORDER BY id DESC LIMIT 1")
        outage = reader.rows("SELECT consecutive, first_failure_at FROM probe_outages WHERE ended_at IS NULL "
                             "ORDER BY id DESC LIMIT 1")
    if not last:
        return ProbeHealth(ps.interval, ps.failures_to_warn)
    finished, outcome, failure_class, detail = last[0]
    consecutive, since = outage[0] if outage else (0, None)
    return ProbeHealth(ps.interval, ps.failures_to_warn, last_at=reader.time(finished), last_outcome=outcome,
                       failure_class=failure_class, detail=detail, consecutive_failures=consecutive or 0,
                       since=reader.time(since))


def estimate_cases(reader: Reader, page: str, keys: set[str]):
    """The page's resolved incidents as estimate.Case (maintenance left out), each with those of `keys`
    ("tag:x", "surface:y", "component:z") it has: only the keys asked about are read, so a store of 20,000
    incidents costs three small queries and one pass."""
    wanted: dict[str, list[str]] = {"tag": [], "surface": [], "component": []}
    for k in keys:
        kind, _, name = k.partition(":")
        if kind in wanted and name:
            wanted[kind].append(name)
    base = ("FROM incidents i JOIN pages p ON p.id = i.page_id WHERE p.name = :page AND i.resolved_at IS NOT NULL "
            "AND i.status IN ('resolved', 'postmortem') AND i.impact <> 'maintenance'")
    by_id: dict[int, set[str]] = {}
    with reader:
        rows = reader.rows(f"SELECT i.id, i.started_at, i.resolved_at, i.impact {base}", {"page": page})
        for kind, table, column in (("tag", "tags", "tag"), ("surface", "surfaces", "surface"),
                                    ("component", "incident_components", "name")):
            if not wanted[kind]:
                continue
            names, params = in_list("k", wanted[kind])
            for iid, name in reader.rows(f"SELECT x.incident_id, x.{column} FROM {table} x WHERE x.{column} IN "
                                         f"{names} AND x.incident_id IN (SELECT i.id {base})",
                                         {**params, "page": page}):
                by_id.setdefault(iid, set()).add(f"{kind}:{name}")
    time = reader.time
    return [Case(time(started), time(resolved), impact or "none", frozenset(by_id.get(iid, ())))
            for iid, started, resolved, impact in rows if started is not None]


def add_estimates(reader: Reader, incidents, now: datetime, probe=None) -> None:
    """Each open incident's `expected_resolution` (the JSON contract: median_at, p90_at, cases, class, or
    None) and `estimate` (the sentence), from its page's resolved incidents (monitor.estimate); with a
    failing probe, the probe's, as an upload incident of the first page."""
    wanted: dict[str, list[tuple[dict, list[str]]]] = {}
    for i in incidents:
        keys = keys_of(i.get("tags", ()), i.get("surfaces", ()), i.get("components", ()))
        wanted.setdefault(i["page"], []).append((i, keys))
    for page, items in wanted.items():
        cases = estimate_cases(reader, page, {k for _, keys in items for k in keys})
        for i, keys in items:
            started = parse_iso(i.get("started_at"))
            est = estimate(cases, keys=keys, impact=i.get("impact"), started_at=started or now, now=now,
                           page_label=page)
            i["expected_resolution"], i["estimate"] = to_json(est), sentence(est)
