"""The page (served at `/` and written by `monitor report`): read from the store in one transaction, drawn
with Jinja2 (autoescape on: every status-page string is text, never markup) and an inline SVG chart. Pure
apart from the store read; no script, nothing loaded from elsewhere."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlalchemy import select

from monitor import db, queries, status
from monitor.models import Incident, Page, ProbeResult, Update
from monitor.reader import Reader
from monitor.records import CLOSED_STATUSES, parse_iso
from monitor.text import TITLE_MAX, cap, clean_line, clean_text, safe_link, utc_words
from monitor.verdict import CHECKLIST, age_words, broad_state

IMPACT_ORDER = ("none", "minor", "major", "critical")
SHAPES = {"none": "circle", "minor": "circle", "major": "square", "critical": "diamond"}

# The chart's geometry, in SVG user units (the SVG scales to the page's width).
W, LEFT, RIGHT = 720, 56, 708
TOP, BOTTOM = 14, 190                  # durations (log scale)
PROBE_Y = 204                          # probe failures
BAR_TOP, BAR_BOTTOM = 220, 262         # incidents per month
H = 292
D_MIN, D_MAX = 60.0, 30 * 86400.0      # the duration axis: 1 min .. 30 days
D_TICKS = ((60, "1 min"), (600, "10 min"), (3600, "1 h"), (6 * 3600, "6 h"), (86400, "1 d"), (7 * 86400, "7 d"),
           (30 * 86400, "30 d+"))


@dataclass(frozen=True, slots=True)
class ProbeFailure:
    at: datetime
    what: str




def probe_failures(session, since: datetime | None) -> list[ProbeFailure]:
    """Failed probes of the Files API since `since`, oldest first, with whose fault each was: the chart draws
    them on the incidents' time axis (the only place the page reads probe results)."""
    q = select(ProbeResult.started_at, ProbeResult.failure_class, ProbeResult.detail).where(ProbeResult.outcome == "failed").order_by(ProbeResult.started_at)
    if since:
        q = q.where(ProbeResult.started_at >= since)
    return [ProbeFailure(at, clean_line(f"{FAULT.get(cls, cls or '?')}: {detail or ''}".rstrip(": ")))
            for at, cls, detail in session.execute(q)]


FAULT = {"openai": "OpenAI's side", "user": "our key or account", "local": "our own network"}


# ------------------------------------------------------------------------------------------------ reading

def gather(session, settings, *, since: datetime | None = None) -> dict:
    """Everything the page shows, from one transaction."""
    report = status.from_session(session, settings)
    now = report.now
    rows = queries.history(Reader(connection=session.connection()), since=since, upload_tags=settings.upload_tags,
                     broad=True)
    seen = {(p, i): (first, watching) for p, i, first, watching in session.execute(
        select(Page.name, Incident.page_incident_id, Incident.first_seen_at, Page.first_poll_at)
        .join(Page, Page.id == Incident.page_id)
        .where(Incident.started_at >= since if since else Incident.id.is_not(None)))}
    incidents = [incident_view(r, seen.get((r["page"], r["id"])), now) for r in rows]
    open_ones = []
    for d in report.verdict.incidents:
        latest = session.execute(
            select(Update.status, Update.body, Update.published_at).join(Incident).join(Page)
            .where(Page.name == d["page"], Incident.page_incident_id == d["id"])
            .order_by(Update.published_at.desc().nulls_last(), Update.id.desc()).limit(1)).first()
        open_ones.append({
            **incident_view(d, None, now), "stale": d["page"] in report.verdict.stale,
            "broad_words": broad_state(d) if d.get("broad") and not d.get("upload", True) else "",
            "update_status": clean_line(latest[0]) if latest else "",
            "update_at": utc_words(latest[2]) if latest and latest[2] else "",
            "update_text": cap(clean_text(latest[1]), settings.notify.max_text_chars) if latest else ""})
    probes = probe_failures(session, since)
    v = report.verdict
    return {
        "now": now, "now_words": utc_words(now), "since": since,
        "words": status.WORDS, "verdict": v.verdict, "reason": v.reason, "exit_code": v.exit_code,
        "checklist": CHECKLIST if v.verdict == "troubleshoot-locally" else (),
        "estimates": [(i["estimate"] if len(v.incidents) == 1 else f"{i['title']}: {i['estimate']}")
                      for i in v.incidents if i.get("estimate")],
        "open": open_ones, "incidents": incidents,
        "pages": [_freshness(p, now) for p in report.health],
        "chart": chart(incidents, probes, now, since),
    }


def incident_view(r: dict, seen, now: datetime) -> dict:
    """One incident as the page shows it: cleaned and capped text, a safe link, words for times."""

    started, resolved = parse_iso(r["started_at"]), parse_iso(r["resolved_at"])
    impact = r["impact"] if r["impact"] in IMPACT_ORDER else "none"
    is_open = resolved is None and r["status"] not in CLOSED_STATUSES
    end = resolved or (now if is_open else None)
    seconds = (end - started).total_seconds() if started and end and end >= started else None
    late = None
    if seen and started and seen[1] and seen[1] <= started:   # watched since before it started: lateness is known
        late = max(0.0, (seen[0] - started).total_seconds())
    return {
        "page": r["page"], "id": r["id"], "title": cap(clean_line(r["title"]) or "(untitled incident)", TITLE_MAX),
        "link": safe_link(r["url"]), "status": clean_line(r["status"]), "impact": impact,
        "tags": [clean_line(t) for t in r["tags"]], "open": is_open, "started": started, "resolved": resolved,
        "surfaces": [clean_line(x) for x in r.get("surfaces", ())],
        "surfaces_down": [f"{clean_line(x)} down" for x in r.get("surfaces", ())],
        "broad": bool(r.get("surfaces")) and not r.get("upload", bool(r["tags"])),
        "started_words": utc_words(started) if started else "unknown",
        "resolved_words": utc_words(resolved) if resolved else ("still open" if is_open else "unknown"),
        "seconds": seconds,
        "duration_words": (age_words(seconds) + (" so far" if is_open else "")) if seconds is not None else "",
        "late_words": age_words(late) if late is not None else "",
    }


def _freshness(p, now: datetime) -> dict:
    age = (now - p.last_success_at).total_seconds() if p.last_success_at else None
    return {"name": p.name, "fresh": p.fresh(now),
            "checked": f"last checked {age_words(age)} ago" if age is not None else "never checked successfully",
            "failures": p.consecutive_failures, "outcome": cap(clean_line(p.last_outcome), 300),
            "full_outcome": clean_line(p.last_outcome)}     # to show it once when the verdict's reason quotes it


# -------------------------------------------------------------------------------------------------- chart

def chart(incidents: list[dict], probes: list[ProbeFailure], now: datetime, since: datetime | None) -> dict:
    """The chart's marks in SVG units: one per incident that has a start (x = start, y = duration on a log
    scale, shape and colour = impact, hollow while open), one per probe failure, and a bar per month."""
    dated = [i for i in incidents if i["started"]]
    first = min([i["started"] for i in dated] + [p.at for p in probes] + ([since] if since else []), default=now)
    start = first.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = max(now, start + timedelta(days=28))
    span = (end - start).total_seconds()

    def x(t: datetime) -> float:
        return round(LEFT + (t - start).total_seconds() / span * (RIGHT - LEFT), 1)

    def y(seconds: float) -> float:
        s = min(max(seconds, D_MIN), D_MAX)
        return round(BOTTOM - math.log(s / D_MIN) / math.log(D_MAX / D_MIN) * (BOTTOM - TOP), 1)

    marks = []
    for i in sorted(dated, key=lambda i: i["started"]):
        seconds = i["seconds"] if i["seconds"] is not None else D_MIN
        words = i["duration_words"] or "duration unknown"
        marks.append({"x": x(i["started"]), "y": y(seconds), "shape": SHAPES[i["impact"]], "impact": i["impact"],
                      "open": i["open"], "link": i["link"], "broad": i["broad"],
                      "label": f"{i['started_words']}: {words}, impact {i['impact']}"
                               + (", broad outage of " + " and ".join(i["surfaces"]) if i["broad"] else "")
                               + (", still open" if i["open"] else "") + f": {i['title']}"})
    months, counts = [], {}
    for i in dated:
        key = (i["started"].year, i["started"].month)
        counts[key] = counts.get(key, 0) + 1
    top = max(counts.values(), default=1)
    years = span > 400 * 86400           # label years on a long axis, months on a short one
    months, ticks = [], []
    for m in _month_starts(start, end):
        nxt = (m + timedelta(days=32)).replace(day=1)
        n = counts.get((m.year, m.month), 0)
        h = (BAR_BOTTOM - BAR_TOP) * n / top
        months.append({"x": x(m), "w": max(round(x(min(nxt, end)) - x(m) - 1, 1), 0.5), "y": round(BAR_BOTTOM - h, 1),
                       "h": round(h, 1), "n": n,
                       "label": f"{m:%B %Y}: {n} upload-related incident{'s' * (n != 1)} or broad outage{'s' * (n != 1)}"})
        if years and m.month == 1:
            ticks.append({"x": x(m), "text": f"{m:%Y}"})
        elif not years:
            ticks.append({"x": x(m), "text": f"{m:%b %Y}" if m.month == 1 or m == start else f"{m:%b}"})
    return {"w": W, "h": H, "left": LEFT, "right": RIGHT, "top": TOP, "bottom": BOTTOM, "probe_y": PROBE_Y,
            "bar_top": BAR_TOP, "bar_bottom": BAR_BOTTOM, "marks": marks, "months": months, "ticks": ticks,
            "top_count": top, "y_ticks": [{"y": y(s), "text": t} for s, t in D_TICKS],
            "probes": [{"x": x(p.at), "label": f"probe failed {utc_words(p.at)}: {p.what}"} for p in probes
                       if p.at >= start]}


def _month_starts(start: datetime, end: datetime):
    m = start
    while m < end:
        yield m
        m = (m + timedelta(days=32)).replace(day=1)


# ------------------------------------------------------------------------------------------------ drawing

_env = None


def environment():
    """The Jinja2 environment: templates beside this module, autoescape for every template."""
    global _env
    if _env is None:
        _env = Environment(loader=PackageLoader("monitor.web", "templates"), autoescape=True,
                           undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return _env


def render(data: dict, *, report: bool = False) -> str:
    return environment().get_template("page.html").render(**data, report=report)


def render_from_store(settings, engine, *, since: datetime | None = None, report: bool = False) -> str:
    """Read and draw the page (blocking: the service calls it in a thread)."""
    with db.transaction(engine) as s:
        data = gather(s, settings, since=since)
    return render(data, report=report)
