"""Atlassian Statuspage pages (status.openai.com before 2025, status.anthropic.com, thousands more).

`/api/v2/incidents.json` holds the 50 most recent incidents with every update and the affected components;
`/history.atom` repeats every update of each incident in its content, and is the fallback when the API fails.
The same JSON shape is served, lossily, by incident.io pages; `parse_incidents_json` is shared with them.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from monitor.records import ComponentRec, IncidentRec, SourceResult, UpdateRec
from monitor.sources.common import (
    ParseError, canonical_url, html_to_text, incident_id_from_link, load_feed, load_json, norm_impact,
    norm_status, notes, parse_time, plausible, struct_time_utc,
)

POLL_PATHS = ("/api/v2/incidents.json", "/history.atom")
COMPONENTS_PATH = "/api/v2/components.json"


def _components(items) -> tuple[ComponentRec, ...]:
    out = []
    for c in items if isinstance(items, list) else ():
        if isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"].strip():
            key = str(c.get("id") or c["name"]).strip()
            out.append(ComponentRec(key=key, name=c["name"].strip()))
    return tuple(out)


def parse_incidents_json(body: bytes, base_url: str, *, source: str = "api", full_timeline: bool = True,
                         now: datetime | None = None) -> SourceResult:
    """Statuspage `incidents.json` (or `summary.json`'s incidents). Skips entries without an id (noted in
    `extra["warnings"]`, with untitled incidents and implausible times); none usable is a ParseError."""
    what = source + " incidents.json"
    data = load_json(body, what)
    if not isinstance(data, dict) or not isinstance(data.get("incidents"), list):
        raise ParseError(f"{what}: no 'incidents' list (the page changed shape?)")
    now = now or datetime.now(timezone.utc)
    recs, skipped, untitled, bad = [], 0, 0, []
    for inc in data["incidents"]:
        if not isinstance(inc, dict) or not isinstance(inc.get("id"), str) or not inc["id"].strip():
            skipped += 1
            continue
        iid = inc["id"].strip()
        updates = []
        for u in inc.get("incident_updates") or ():
            if not isinstance(u, dict):
                continue
            body_text = u.get("body") if isinstance(u.get("body"), str) else ""
            updates.append(UpdateRec(
                status=norm_status(u.get("status")), body=body_text.strip(),
                published_at=parse_time(u.get("display_at"), now, bad) or parse_time(u.get("created_at"), now, bad),
                source=source, page_update_id=str(u["id"]) if u.get("id") else None))
        comps = _components(inc.get("components"))
        title = inc.get("name").strip() if isinstance(inc.get("name"), str) else ""
        untitled += not title
        recs.append(IncidentRec(
            page_incident_id=iid, source=source, title=title,
            url=canonical_url(base_url, iid),
            status=norm_status(inc.get("status")), impact=norm_impact(inc.get("impact")),
            started_at=parse_time(inc.get("started_at"), now, bad) or parse_time(inc.get("created_at"), now, bad),
            updated_at=parse_time(inc.get("updated_at"), now, bad),
            resolved_at=parse_time(inc.get("resolved_at"), now, bad),
            updates=tuple(updates), components=comps,
            full_timeline=full_timeline and bool(updates)))
    if skipped and not recs:
        raise ParseError(f"{what}: none of its {skipped} incidents has an id (the page changed shape?)")
    return SourceResult(incidents=tuple(recs),
                        extra={"warnings": notes(skipped=skipped, untitled=untitled, rejected=bad)})


def parse_components_json(body: bytes) -> SourceResult:
    data = load_json(body, "components.json")
    if not isinstance(data, dict) or not isinstance(data.get("components"), list):
        raise ParseError("components.json: no 'components' list")
    groups = {c.get("id"): c.get("name") for c in data["components"] if isinstance(c, dict) and c.get("group")}
    out = []
    for c in data["components"]:
        if not isinstance(c, dict) or c.get("group") or not isinstance(c.get("name"), str):
            continue
        out.append(ComponentRec(key=str(c.get("id") or c["name"]), name=c["name"].strip(),
                                impact=c.get("status") if isinstance(c.get("status"), str) else None))
    return SourceResult(components=tuple(out), extra={"groups": {k: v for k, v in groups.items() if k}})


# <p><small>May <var data-var='date'>31</var>, <var data-var='time'>18:05</var> PDT</small><br><strong>Resolved</strong> - text</p>
_UPDATE = re.compile(r"<p>\s*<small>(?P<when>.*?)</small>\s*<br\s*/?>\s*<strong>(?P<status>[^<]+)</strong>\s*-\s*"
                     r"(?P<body>.*?)</p>", re.S | re.I)
_ZONES = {"UTC": 0, "GMT": 0, "PDT": -7, "PST": -8, "EDT": -4, "EST": -5, "CDT": -5, "CST": -6, "MDT": -6, "MST": -7}


def _atlassian_when(text: str, year: int, now: datetime | None = None, rejected: list | None = None) -> datetime | None:
    return plausible(_atlassian_time(text, year), now, rejected)


def _atlassian_time(text: str, year: int) -> datetime | None:
    t = re.sub(r"\s+", " ", html_to_text(text))
    m = re.match(r"([A-Z][a-z]{2}) (\d{1,2}),(?: (\d{4}),)? (\d{1,2}):(\d{2}) ?([A-Z]{3})?", t)
    if not m:
        return None
    mon, day, yr, hh, mm, zone = m.groups()
    try:
        local = datetime.strptime(f"{mon} {day} {yr or year} {hh}:{mm}", "%b %d %Y %H:%M")
    except ValueError:
        return None
    from datetime import timedelta

    return (local - timedelta(hours=_ZONES.get(zone or "UTC", 0))).replace(tzinfo=timezone.utc)


def parse_feed(body: bytes, content_type: str, base_url: str, *, now: datetime | None = None) -> SourceResult:
    """Atlassian `history.atom`/`history.rss`: each entry's content lists every update, newest first."""
    d = load_feed(body, content_type, "history feed")
    now = now or datetime.now(timezone.utc)
    recs, skipped, untitled, bad = [], 0, 0, []
    for e in d.entries:
        # the link carries the incident's code (as the API's id); the Atom id has an internal number
        iid = incident_id_from_link(e.get("link")) or incident_id_from_link(e.get("id"))
        if not iid:
            skipped += 1
            continue
        updated = struct_time_utc(e.get("updated_parsed") if "updated_parsed" in e else None, now, bad)
        published = struct_time_utc(e.get("published_parsed") if "published_parsed" in e else None, now, bad)
        year = (updated or published or now).year
        content = (e.get("content") or [{}])[0].get("value") or e.get("summary") or ""
        updates = []
        for m in _UPDATE.finditer(content):
            updates.append(UpdateRec(
                status=norm_status(html_to_text(m["status"])), body=html_to_text(m["body"]),
                published_at=_atlassian_when(m["when"], year, now, bad), source="feed"))
        status = updates[0].status if updates else None
        title = (e.get("title") or "").strip()
        untitled += not title
        recs.append(IncidentRec(
            page_incident_id=iid, source="feed", title=title,
            url=canonical_url(base_url, iid), status=status,
            started_at=updates[-1].published_at if updates else published,
            updated_at=updated,
            resolved_at=next((u.published_at for u in updates if u.status == "resolved"), None),
            updates=tuple(updates), full_timeline=bool(updates)))
    if skipped and not recs:
        raise ParseError(f"history feed: none of its {skipped} entries links to an incident (the page changed shape?)")
    return SourceResult(incidents=tuple(recs),
                        extra={"warnings": notes(skipped=skipped, what="entries", untitled=untitled, rejected=bad)})
