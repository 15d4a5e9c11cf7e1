"""incident.io pages (status.openai.com since 2025).

What each path really serves (shared docs: status-formats.md):
- `/api/v2/incidents.json`: the 25 most recent incidents, Statuspage-shaped but lossy (no components,
  impact flattened, update bodies sometimes empty): ids, names, statuses, times, and text when present.
- `/feed.atom`: one entry per incident, rewritten in place with the *latest* update; the "Affected
  components" list shows each component's state *now*, and the feed's own timestamps change on every fetch.
- `/proxy/<host>/incidents/<id>`: the full timeline with text and component impacts; fetched for an
  incident that is new or changed. `/proxy/<host>/incidents?start_at&end_at` lists a window (backfill).
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from monitor.records import ComponentRec, IncidentRec, SourceResult, UpdateRec
from monitor.sources import statuspage
from monitor.sources.common import (
    ParseError, canonical_url, html_to_text, incident_id_from_link, load_feed, load_json, norm_impact,
    norm_status, notes, parse_time, struct_time_utc,
)

POLL_PATHS = ("/api/v2/incidents.json", "/feed.atom")
COMPONENTS_PATH = "/api/v2/components.json"
BACKFILL_WINDOW_DAYS = 90


def detail_path(host: str, incident_id: str) -> str:
    return f"/proxy/{host}/incidents/{incident_id}"


def window_path(host: str, start: datetime, end: datetime) -> str:
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return f"/proxy/{host}/incidents?start_at={start.strftime(fmt)}&end_at={end.strftime(fmt)}"


def parse_api_incidents(body: bytes, base_url: str, now: datetime | None = None) -> SourceResult:
    """The lossy Statuspage-compatible list: never a full timeline, never component evidence."""
    res = statuspage.parse_incidents_json(body, base_url, source="api", full_timeline=False, now=now)
    return SourceResult(incidents=tuple(_drop_impact(r) for r in res.incidents), extra=res.extra)


def _drop_impact(r: IncidentRec) -> IncidentRec:
    from dataclasses import replace

    # impact is flattened to none/minor here: the proxy timeline or the feed knows better
    return replace(r, impact=None, components=())


_STATUS_LINE = re.compile(r"<b>\s*Status:\s*([^<]+?)\s*</b>", re.I)
_AFFECTED = re.compile(r"<b>\s*Affected components\s*</b>(.*)$", re.I | re.S)
_COMPONENT_ITEM = re.compile(r"<li>\s*(.*?)\s*\(([^()]*)\)\s*</li>", re.I | re.S)


def parse_feed_item_html(html: str) -> tuple[str | None, str, tuple[ComponentRec, ...]]:
    """Status, message text and the components not *currently* operational from one feed item's HTML."""
    status = None
    m = _STATUS_LINE.search(html)
    if m:
        status = norm_status(m.group(1))
        html = html[m.end():]
    comps: list[ComponentRec] = []
    a = _AFFECTED.search(html)
    if a:
        html = html[: a.start()]
        for name, state in _COMPONENT_ITEM.findall(a.group(1)):
            name = html_to_text(name)
            state_key = state.strip().lower().replace(" ", "_")
            if name and state_key != "operational":  # a live "Operational" is no evidence at all
                comps.append(ComponentRec(key=name, name=name, impact=state_key or None))
    return status, html_to_text(html), tuple(comps)


def parse_feed(body: bytes, content_type: str, base_url: str, now: datetime | None = None) -> SourceResult:
    """`/feed.atom`, `/feed.rss`, `/history.atom`: one record per incident carrying its latest update."""
    d = load_feed(body, content_type, "feed")
    now = now or datetime.now(timezone.utc)
    recs, skipped, untitled, bad = [], 0, 0, []
    for e in d.entries:
        iid = incident_id_from_link(e.get("id")) or incident_id_from_link(e.get("link"))
        title = (e.get("title") or "").strip()
        if not iid or not title:
            skipped += not iid
            untitled += bool(iid)
            continue
        raw = e.get("summary") or ((e.get("content") or [{}])[0].get("value")) or ""
        status, text, comps = parse_feed_item_html(raw)
        # Atom <updated> is the latest update's time; RSS pubDate is the incident's start.
        updated = struct_time_utc(e.get("updated_parsed"), now, bad) if "updated_parsed" in e else None
        published = struct_time_utc(e.get("published_parsed"), now, bad) if "published_parsed" in e else None
        update = UpdateRec(status=status, body=text, published_at=updated, source="feed")
        recs.append(IncidentRec(
            page_incident_id=iid, source="feed", title=title, url=canonical_url(base_url, iid),
            status=status, started_at=published, updated_at=updated,
            updates=(update,) if (status or text) else (), components=comps))
    if (skipped or untitled) and not recs:
        raise ParseError(f"feed: none of its {skipped + untitled} entries names an incident (the page changed shape?)")
    warn = notes(skipped=skipped, what="entries", rejected=bad)
    if untitled:  # the feed's title is what the item is about: an untitled item is left out
        warn.append(f"entries without a title skipped: {untitled}")
    return SourceResult(incidents=tuple(recs), extra={"warnings": warn})


def _proxy_incident(inc: dict, base_url: str, now: datetime, *, full: bool) -> IncidentRec | None:
    iid = inc.get("id")
    if not isinstance(iid, str) or not iid.strip():
        return None
    names = {}
    for c in inc.get("affected_components") or ():
        if isinstance(c, dict):
            cid = c.get("id") or c.get("component_id")
            if cid and isinstance(c.get("name"), str):
                names[str(cid)] = c["name"].strip()
    comps: dict[str, ComponentRec] = {}
    for ci in inc.get("component_impacts") or ():
        if isinstance(ci, dict) and ci.get("component_id"):
            cid = str(ci["component_id"])
            comps[cid] = ComponentRec(key=cid, name=names.get(cid, ""), impact=ci.get("status"))
    for cid, name in names.items():
        comps.setdefault(cid, ComponentRec(key=cid, name=name))
    updates = []
    for u in inc.get("updates") or ():
        if not isinstance(u, dict):
            continue
        msg = u.get("message_string") if isinstance(u.get("message_string"), str) else ""
        updates.append(UpdateRec(
            status=norm_status(u.get("to_status")), body=msg.strip(),
            published_at=parse_time(u.get("published_at"), now), source="proxy",
            page_update_id=str(u["id"]) if u.get("id") else None))
    times = [u.published_at for u in updates if u.published_at]
    resolved = [u.published_at for u in updates if u.status == "resolved" and u.published_at]
    impacts = [norm_impact(c.impact) for c in comps.values() if c.impact]
    rank = ("none", "minor", "major", "critical")
    worst = norm_impact(inc.get("current_worst_impact")) or (
        max(impacts, key=rank.index) if impacts else None)
    return IncidentRec(
        page_incident_id=iid.strip(), source="proxy",
        title=inc.get("name").strip() if isinstance(inc.get("name"), str) else "",
        url=canonical_url(base_url, iid.strip()), status=norm_status(inc.get("status")), impact=worst,
        started_at=parse_time(inc.get("published_at"), now) or (min(times) if times else None),
        updated_at=parse_time(inc.get("last_update_at"), now) or (max(times) if times else None),
        resolved_at=min(resolved) if resolved else None,
        updates=tuple(updates), components=tuple(comps.values()), full_timeline=full and bool(updates))


def parse_proxy_incident(body: bytes, base_url: str, now: datetime | None = None) -> IncidentRec:
    data = load_json(body, "incident timeline")
    inc = data.get("incident") if isinstance(data, dict) else None
    rec = _proxy_incident(inc, base_url, now or datetime.now(timezone.utc), full=True) if isinstance(inc, dict) else None
    if rec is None:
        raise ParseError("incident timeline: no 'incident' with an id (the page changed shape?)")
    return rec


def parse_proxy_window(body: bytes, base_url: str, now: datetime | None = None) -> SourceResult:
    data = load_json(body, "incident list")
    items = data.get("incidents") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ParseError("incident list: no 'incidents' list (the page changed shape?)")
    now = now or datetime.now(timezone.utc)
    recs = [r for r in (_proxy_incident(i, base_url, now, full=False) for i in items if isinstance(i, dict)) if r]
    return SourceResult(incidents=tuple(recs))


def parse_components(body: bytes) -> SourceResult:
    return statuspage.parse_components_json(body)
