"""incident.io pages (status.openai.com since 2025).

What each path really serves (shared docs: status-formats.md):
- `/api/v2/incidents.json`: the 25 most recent incidents, Statuspage-shaped but lossy (no components,
  update bodies sometimes empty): ids, names, statuses, impact (flattened to none/minor in April 2026, real
  since September 2026), times, and text when present.
- `/feed.atom`: one entry per incident, rewritten in place with the *latest* update; the "Affected
  components" list shows each component's state *now*, and the feed's own timestamps change on every fetch.
- `/proxy/<host>/incidents/<id>`: the full timeline with text and component impacts; fetched for an
  incident that is new or changed. `/proxy/<host>/incidents?start_at&end_at` lists a window (backfill),
  each entry with its updates (when an entry has none, its timeline is fetched).
"""
from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta

from monitor.records import ComponentRec, IncidentRec, SourceResult, UpdateRec, parse_iso, worst_impact
from monitor.sources import statuspage
from monitor.sources.common import (
    Backfill, Context, Fetch, PageKind, ParseError, as_list, as_str, by_cause, canonical_url, cause,
    html_to_text, incident_id_from_link, load_feed, load_json, norm_impact, norm_status, notes, now_utc,
    parse_time, struct_time_utc,
)

BACKFILL_WINDOW_DAYS = 90


class IncidentIo(PageKind):
    name = "incidentio"
    poll_paths = ("/api/v2/incidents.json", "/feed.atom")
    components_path = "/api/v2/components.json"
    timelines = history = True

    def recognises(self, summary_page: dict | None, feed: bytes | None) -> bool:
        # no `time_zone` in summary.json's page; the feed names incident.io as its generator
        if summary_page is not None:
            return "time_zone" not in summary_page
        return feed is not None and b"incident.io" in feed[:4000]

    def parse(self, path: str, body: bytes, content_type: str, ctx: Context) -> SourceResult:
        if path == self.components_path:
            return statuspage.parse_components_json(body)
        if path.startswith("/proxy/"):
            if "?" in path:
                return parse_proxy_window(body, ctx.base_url, ctx.now)
            return SourceResult(incidents=(parse_proxy_incident(body, ctx.base_url, ctx.now),))
        if path.endswith(".json"):
            return parse_api_incidents(body, ctx.base_url, ctx.now)
        return parse_feed(body, content_type, ctx.base_url, ctx.now)

    def timeline_path(self, host: str, incident_id: str) -> str:
        return f"/proxy/{host}/incidents/{incident_id}"

    async def backfill(self, fetch: Fetch, ctx: Context, since: datetime, *, details: bool) -> Backfill:
        """Windows of up to three months back to `since`; with `details`, the timeline of each listed
        incident whose list entry carries no updates (entries that do are complete already)."""
        from monitor.sources.http import FetchError

        out = Backfill([], [], [])
        windows, end = [], ctx.now
        while end > since:
            start = max(since, end - timedelta(days=BACKFILL_WINDOW_DAYS))
            windows.append(window_path(ctx.host, start, end))
            end = start
        failed: list[str] = []
        for path in windows:
            try:
                ans = await fetch(path)
                res = self.read(path, ans.body, ans.content_type, ctx)
            except FetchError as exc:
                failed.append(cause(str(exc), ctx.base_url + path))
                continue
            except ParseError as exc:
                failed.append(str(exc))
                continue
            out.results.append(res)
            out.answered.append(path)
        out.errors += by_cause("incident lists", failed, unit="window")
        if details:
            bare = [r.page_incident_id for res in out.results for r in res.incidents if not r.full_timeline]
            failed = []
            for iid in dict.fromkeys(bare):
                path = self.timeline_path(ctx.host, iid)
                try:
                    ans = await fetch(path)
                    out.results.append(self.read(path, ans.body, ans.content_type, ctx))
                except FetchError as exc:
                    failed.append(cause(str(exc), ctx.base_url + path))
                except ParseError as exc:
                    failed.append(str(exc))
            out.errors += by_cause("timelines", failed)
        return out


KIND = IncidentIo()


def window_path(host: str, start: datetime, end: datetime) -> str:
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return f"/proxy/{host}/incidents?start_at={start.strftime(fmt)}&end_at={end.strftime(fmt)}"


def parse_api_incidents(body: bytes, base_url: str, now: datetime | None = None) -> SourceResult:
    """The lossy Statuspage-compatible list: never a full timeline, never component evidence (its
    `components` is [] or missing); its impact is kept, ranked below the proxy's (see merge)."""
    res = statuspage.parse_incidents_json(body, base_url, source="api", full_timeline=False, now=now)
    return SourceResult(incidents=tuple(replace(r, components=()) for r in res.incidents), extra=res.extra)


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
    now = now or now_utc()
    recs, skipped, untitled, bad = [], 0, 0, []
    for e in d.entries:
        iid = incident_id_from_link(e.get("id")) or incident_id_from_link(e.get("link"))
        title = as_str(e.get("title"))
        if not iid or not title:
            skipped += not iid
            untitled += bool(iid)
            continue
        raw = as_str(e.get("summary")) or as_str((as_list(e.get("content")) or [{}])[0].get("value"))
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
    iid = as_str(inc.get("id"))
    if not iid:
        return None
    names = {}
    for c in as_list(inc.get("affected_components")):
        if isinstance(c, dict):
            cid = as_str(c.get("id")) or as_str(c.get("component_id"))
            if cid and as_str(c.get("name")):
                names[cid] = as_str(c.get("name"))
    comps: dict[str, ComponentRec] = {}
    for ci in as_list(inc.get("component_impacts")):
        if isinstance(ci, dict) and as_str(ci.get("component_id")):
            cid = as_str(ci["component_id"])
            comps[cid] = ComponentRec(key=cid, name=names.get(cid, ""), impact=as_str(ci.get("status")) or None)
    for cid, name in names.items():
        comps.setdefault(cid, ComponentRec(key=cid, name=name))
    updates = []
    for u in as_list(inc.get("updates")):
        if not isinstance(u, dict):
            continue
        updates.append(UpdateRec(
            status=norm_status(u.get("to_status")), body=as_str(u.get("message_string")),
            published_at=parse_time(u.get("published_at"), now), source="proxy",
            page_update_id=as_str(u.get("id")) or None))
    times = [u.published_at for u in updates if u.published_at]
    resolved = [u.published_at for u in updates if u.status == "resolved" and u.published_at]
    impacts = [norm_impact(c.impact) for c in comps.values()]
    worst = norm_impact(inc.get("current_worst_impact")) or (
        worst_impact(impacts) if any(impacts) else None)
    return IncidentRec(
        page_incident_id=iid, source="proxy", title=as_str(inc.get("name")),
        url=canonical_url(base_url, iid), status=norm_status(inc.get("status")), impact=worst,
        started_at=parse_time(inc.get("published_at"), now) or (min(times) if times else None),
        updated_at=parse_time(inc.get("last_update_at"), now) or (max(times) if times else None),
        resolved_at=min(resolved) if resolved else None,
        updates=tuple(updates), components=tuple(comps.values()), full_timeline=full and bool(updates),
        scheduled_until=parse_iso(inc.get("scheduled_end_at")) or parse_iso(inc.get("ends_at")))


def parse_proxy_incident(body: bytes, base_url: str, now: datetime | None = None) -> IncidentRec:
    data = load_json(body, "incident timeline")
    inc = data.get("incident") if isinstance(data, dict) else None
    rec = _proxy_incident(inc, base_url, now or now_utc(), full=True) if isinstance(inc, dict) else None
    if rec is None:
        raise ParseError("incident timeline: no 'incident' with an id (the page changed shape?)")
    return rec


def parse_proxy_window(body: bytes, base_url: str, now: datetime | None = None) -> SourceResult:
    """A window's list; an entry that carries its updates is a full timeline (the page lists them all)."""
    data = load_json(body, "incident list")
    items = data.get("incidents") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ParseError("incident list: no 'incidents' list (the page changed shape?)")
    now = now or now_utc()
    recs = [r for r in (_proxy_incident(i, base_url, now, full=True) for i in items if isinstance(i, dict)) if r]
    return SourceResult(incidents=tuple(recs))
