"""Atlassian Statuspage pages (status.openai.com before 2025, status.anthropic.com, thousands more).

`/api/v2/incidents.json` holds the 50 most recent incidents with every update and the affected components;
`/history.atom` repeats every update of each incident in its content, in the page's own time zone (the
`time_zone` of every JSON answer's `page`), and is the fallback when the API fails.
The same JSON shape is served, lossily, by incident.io pages; `parse_incidents_json` is shared with them.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from monitor.records import ComponentRec, IncidentRec, SourceResult, UpdateRec, parse_iso
from monitor.sources.common import (
    Context, PageKind, ParseError, as_list, as_str, canonical_url, html_to_text, incident_id_from_link,
    load_feed, load_json, norm_impact, norm_status, notes, now_utc, parse_time, plausible, struct_time_utc,
)


class Statuspage(PageKind):
    name = "statuspage"
    poll_paths = ("/api/v2/incidents.json", "/history.atom")
    components_path = "/api/v2/components.json"

    def recognises(self, summary_page: dict | None, feed: bytes | None) -> bool:
        # summary.json's page names the page's time zone; any other history feed is taken for Atlassian's
        return "time_zone" in summary_page if summary_page is not None else feed is not None

    def parse(self, path: str, body: bytes, content_type: str, ctx: Context) -> SourceResult:
        if path == self.components_path:
            return parse_components_json(body)
        if path.endswith(".json"):
            return parse_incidents_json(body, ctx.base_url, now=ctx.now)
        return parse_feed(body, content_type, ctx.base_url, now=ctx.now, time_zone=ctx.time_zone)


KIND = Statuspage()


def page_time_zone(data) -> str | None:
    """The page's `time_zone` from a JSON answer's `page`, when it names a zone zoneinfo knows."""
    page = data.get("page") if isinstance(data, dict) else None
    name = as_str(page.get("time_zone")) if isinstance(page, dict) else ""
    return name if name and _zone(name) is not None else None


def _zone(name: str):
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


_SEVERITY = ("under_maintenance", "degraded_performance", "partial_outage", "major_outage")


def _components(items, updates=()) -> tuple[ComponentRec, ...]:
    """The incident's components, each with the worst state its updates gave it (`affected_components`'
    `new_status`; the incident's own `components` list shows the state now, not during the incident)."""
    worst: dict[str, str] = {}
    for u in as_list(updates):
        for a in as_list(u.get("affected_components")) if isinstance(u, dict) else ():
            name, state = (as_str(a.get("name")), as_str(a.get("new_status"))) if isinstance(a, dict) else ("", "")
            if name and state in _SEVERITY and _SEVERITY.index(state) >= _SEVERITY.index(worst.get(name, state)):
                worst[name] = state
    out = []
    for c in as_list(items):
        if isinstance(c, dict) and as_str(c.get("name")):
            key = as_str(c.get("id")) or as_str(c.get("name"))
            out.append(ComponentRec(key=key, name=as_str(c.get("name")), impact=worst.get(as_str(c.get("name")))))
    return tuple(out)


def parse_incidents_json(body: bytes, base_url: str, *, source: str = "api", full_timeline: bool = True,
                         now: datetime | None = None) -> SourceResult:
    """Statuspage `incidents.json` (or `summary.json`'s incidents). Skips entries without an id (noted in
    `extra["warnings"]`, with untitled incidents and implausible times); none usable is a ParseError.
    `extra["time_zone"]` is the page's zone when it names one."""
    what = source + " incidents.json"
    data = load_json(body, what)
    if not isinstance(data, dict) or not isinstance(data.get("incidents"), list):
        raise ParseError(f"{what}: no 'incidents' list (the page changed shape?)")
    now = now or now_utc()
    recs, skipped, untitled, bad = [], 0, 0, []
    for inc in data["incidents"]:
        if not isinstance(inc, dict) or not as_str(inc.get("id")):
            skipped += 1
            continue
        iid = as_str(inc["id"])
        updates = []
        for u in as_list(inc.get("incident_updates")):
            if not isinstance(u, dict):
                continue
            updates.append(UpdateRec(
                status=norm_status(u.get("status")), body=as_str(u.get("body")),
                published_at=parse_time(u.get("display_at"), now, bad) or parse_time(u.get("created_at"), now, bad),
                source=source, page_update_id=_id(u.get("id"))))
        title = as_str(inc.get("name"))
        untitled += not title
        recs.append(IncidentRec(
            page_incident_id=iid, source=source, title=title,
            url=canonical_url(base_url, iid),
            status=norm_status(inc.get("status")), impact=norm_impact(inc.get("impact")),
            started_at=parse_time(inc.get("started_at"), now, bad) or parse_time(inc.get("created_at"), now, bad),
            updated_at=parse_time(inc.get("updated_at"), now, bad),
            resolved_at=parse_time(inc.get("resolved_at"), now, bad),
            updates=tuple(updates), components=_components(inc.get("components"), inc.get("incident_updates")),
            full_timeline=full_timeline and bool(updates),
            scheduled_until=parse_iso(inc.get("scheduled_until"))))
    if skipped and not recs:
        raise ParseError(f"{what}: none of its {skipped} incidents has an id (the page changed shape?)")
    extra = {"warnings": notes(skipped=skipped, untitled=untitled, rejected=bad)}
    if zone := page_time_zone(data):
        extra["time_zone"] = zone
    return SourceResult(incidents=tuple(recs), extra=extra)


def _id(value) -> str | None:
    """A page's id for an update: a string or a number, else none."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value).strip() or None


def parse_components_json(body: bytes) -> SourceResult:
    data = load_json(body, "components.json")
    if not isinstance(data, dict) or not isinstance(data.get("components"), list):
        raise ParseError("components.json: no 'components' list")
    out = []
    for c in data["components"]:
        if not isinstance(c, dict) or c.get("group") or not as_str(c.get("name")):
            continue
        out.append(ComponentRec(key=_id(c.get("id")) or as_str(c["name"]), name=as_str(c["name"]),
                                impact=as_str(c.get("status")) or None))
    extra = {"time_zone": zone} if (zone := page_time_zone(data)) else {}
    return SourceResult(components=tuple(out), extra=extra)


# <p><small>May <var data-var='date'>31</var>, <var data-var='time'>18:05</var> PDT</small><br><strong>Resolved</strong> - text</p>
_UPDATE = re.compile(r"<p>\s*<small>(?P<when>.*?)</small>\s*<br\s*/?>\s*<strong>(?P<status>[^<]+)</strong>\s*-\s*"
                     r"(?P<body>.*?)</p>", re.S | re.I)
_WHEN = re.compile(r"([A-Z][a-z]{2}) (\d{1,2}),(?: (\d{4}),)? (\d{1,2}):(\d{2})(?: ?([A-Za-z]{1,6}))?")
_UTC_WORDS = ("UTC", "GMT", "Z")


def _atlassian_time(text: str, year: int, time_zone: str | None, unknown: set) -> datetime | None:
    """An update's "May 31, 18:05 PDT" as UTC, read in the page's own zone. A zone word other than UTC that
    the page's zone does not use (or any such word while the page's zone is unknown) gives None, noted in
    `unknown`: a time is never guessed."""
    m = _WHEN.match(re.sub(r"\s+", " ", html_to_text(text)))
    if not m:
        return None
    mon, day, yr, hh, mm, word = m.groups()
    try:
        local = datetime.strptime(f"{mon} {day} {yr or year} {hh}:{mm}", "%b %d %Y %H:%M")
    except ValueError:
        return None
    if not word or word.upper() in _UTC_WORDS:
        return local.replace(tzinfo=timezone.utc)
    zone = _zone(time_zone) if time_zone else None
    for fold in (0, 1):
        name = local.replace(tzinfo=zone, fold=fold).tzname() if zone else None
        # "PDT", or the generic "PT" some pages write for it
        if name and word in (name, name[0] + name[2:] if len(name) == 3 and name[1] in "SD" else name):
            return local.replace(tzinfo=zone, fold=fold).astimezone(timezone.utc)
    unknown.add(word)
    return None


def parse_feed(body: bytes, content_type: str, base_url: str, *, now: datetime | None = None,
               time_zone: str | None = None) -> SourceResult:
    """Atlassian `history.atom`/`history.rss`: each entry's content lists every update, newest first, its
    times in the page's `time_zone` (an IANA name; None when not known yet)."""
    d = load_feed(body, content_type, "history feed")
    now = now or now_utc()
    recs, skipped, untitled, bad, unknown = [], 0, 0, [], set()
    for e in d.entries:
        # the link carries the incident's code (as the API's id); the Atom id has an internal number
        iid = incident_id_from_link(e.get("link")) or incident_id_from_link(e.get("id"))
        if not iid:
            skipped += 1
            continue
        updated = struct_time_utc(e.get("updated_parsed") if "updated_parsed" in e else None, now, bad)
        published = struct_time_utc(e.get("published_parsed") if "published_parsed" in e else None, now, bad)
        year = (updated or published or now).year
        content = as_str((as_list(e.get("content")) or [{}])[0].get("value")) or as_str(e.get("summary"))
        updates = []
        for m in _UPDATE.finditer(content):
            at = plausible(_atlassian_time(m["when"], year, time_zone, unknown), now, bad)
            updates.append(UpdateRec(status=norm_status(html_to_text(m["status"])), body=html_to_text(m["body"]),
                                     published_at=at, source="feed"))
        title = as_str(e.get("title"))
        untitled += not title
        recs.append(IncidentRec(
            page_incident_id=iid, source="feed", title=title,
            url=canonical_url(base_url, iid), status=updates[0].status if updates else None,
            started_at=updates[-1].published_at if updates else published,
            updated_at=updated,
            resolved_at=next((u.published_at for u in updates if u.status == "resolved"), None),
            # the feed lists updates newest first: stored oldest first, as every source gives them, so that
            # updates whose time is left out keep their real order
            updates=tuple(reversed(updates)), full_timeline=bool(updates)))
    if skipped and not recs:
        raise ParseError(f"history feed: none of its {skipped} entries links to an incident (the page changed shape?)")
    warn = notes(skipped=skipped, what="entries", untitled=untitled, rejected=bad)
    if unknown:
        zone = f"the page's time zone {time_zone}" if time_zone else "the page's time zone (not known yet)"
        warn.append(f"update times in {', '.join(sorted(unknown))} left out: not a zone word of {zone}")
    return SourceResult(incidents=tuple(recs), extra={"warnings": warn})
