"""Pure merging: the records several sources give for one incident, plus what is stored, become one incident
state, and we say what changed. No I/O here.

Rules (each one answers a way a real page misleads a naive poller):
- the status is that of the newest update in the merged timeline, so a stale source cannot reopen or
  re-resolve an incident, and an in-place feed item rewritten with the same text is no change;
- an update is the same update when its page id matches, its text matches (ignoring markup), or it has the
  same status close in time while one side has no text; a text once stored is never replaced by an empty one;
- a feed item's component list is live state, not history, and never removes components;
- impact comes from the best source that gives one (the proxy's, ranked from its component impacts, then
  the API's); a source that omits impact, or ranks below the one that set it, never changes it;
- an incident can reopen (resolved -> monitoring -> resolved): its resolution is the first "resolved" update
  after its last open one, so each resolution is its own change with its own message.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitor.records import (
    CLOSED_STATUSES, OPEN_STATUSES, UNKNOWN_STATUS, ComponentRec, IncidentRec, UpdateRec, impact_rank, worst_impact,
)
from monitor.sources.common import norm_impact, text_key

SOURCE_PRIORITY = {"proxy": 0, "api": 1, "feed": 2}  # which source's scalar fields win when they disagree
NEAR = timedelta(minutes=2)
NEAR_EMPTY = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class IncidentState:
    page_incident_id: str
    title: str = ""
    url: str | None = None
    status: str = "investigating"
    impact: str = "none"
    started_at: datetime | None = None
    resolved_at: datetime | None = None
    updated_at: datetime | None = None
    updates: tuple[UpdateRec, ...] = ()
    components: tuple[ComponentRec, ...] = ()
    sources: frozenset[str] = frozenset()
    full_timeline: bool = False
    scheduled_until: datetime | None = None    # a maintenance's planned end

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def latest_update(self) -> UpdateRec | None:
        return self.updates[-1] if self.updates else None

    @property
    def reopened(self) -> bool:
        """Resolved once, then an update with an open status: people who were told "resolved" must wait again."""
        return _last_open(self.updates) > _first_resolved(self.updates) >= 0


@dataclass(frozen=True, slots=True)
class Change:
    """A merged incident and what is new about it. `event` is what people are told (or None)."""

    state: IncidentState
    previous: IncidentState | None
    event: str | None                    # opened | updated | resolved | None
    new_updates: tuple[UpdateRec, ...] = ()
    changed: bool = True                 # False: nothing to write

    @property
    def dedupe_key(self) -> str:
        """Names this change for the outbox: the same change seen again (restart, re-poll, another
        source) gets the same key, so it is never sent twice."""
        s = self.state
        if self.event == "opened":
            return f"{s.page_incident_id}:opened"
        if self.event == "resolved":
            return f"{s.page_incident_id}:resolved:{_key_time(s.resolved_at)}"
        # the latest update by its status and how many updates with that status the incident has had: the
        # same whichever source showed it (only some sources carry update ids, and their times differ)
        last = s.latest_update()
        status = last.status if last else s.status
        n = sum(1 for u in s.updates if u.status == status)
        return f"{s.page_incident_id}:updated:{status or 'update'}#{n}"


def _key_time(t: datetime | None) -> str:
    # the format of keys already in stores: changing it would make a change seen again look new
    return t.isoformat() if t else "-"


def _last_open(updates) -> int:
    return max((i for i, u in enumerate(updates) if u.status in OPEN_STATUSES), default=-1)


def _first_resolved(updates) -> int:
    return next((i for i, u in enumerate(updates) if u.status in CLOSED_STATUSES), -1)


def _sort_key(u: UpdateRec):
    return (u.published_at is None, u.published_at or datetime.min, )


def _same_update(a: UpdateRec, b: UpdateRec) -> bool:
    if a.page_update_id and b.page_update_id and a.source == b.source:
        return a.page_update_id == b.page_update_id
    if a.page_update_id and a.page_update_id == b.page_update_id:
        return True
    ka, kb = text_key(a.body), text_key(b.body)
    status_ok = a.status is None or b.status is None or a.status == b.status
    if ka and kb and status_ok and (ka == kb or (min(len(ka), len(kb)) > 40 and (ka.startswith(kb) or kb.startswith(ka)))):
        return True
    if not status_ok or a.published_at is None or b.published_at is None:
        return False
    gap = abs(a.published_at - b.published_at)
    if "feed" in (a.source, b.source) and gap <= NEAR:
        return True  # the feed's rendering of an update another source carries
    return (not ka or not kb) and gap <= NEAR_EMPTY


def _fill(old: UpdateRec, new: UpdateRec) -> UpdateRec:
    """Complete `old` with what `new` knows; never blank a text or move a known time."""
    body = old.body
    if not body and new.body:
        body = new.body
    elif new.body and new.source == "proxy" and old.source != "proxy":
        body = new.body  # the page's own plain text beats feed HTML or API Markdown renderings
    return replace(
        old, body=body, status=old.status or new.status,
        published_at=old.published_at or new.published_at,
        page_update_id=old.page_update_id or new.page_update_id,
    )


def _merge_updates(base: list[UpdateRec], incoming: list[UpdateRec], now: datetime) -> tuple[list[UpdateRec], list[UpdateRec]]:
    merged = list(base)
    added: list[UpdateRec] = []
    for u in incoming:
        if not u.body and u.status is None:
            continue
        for i, old in enumerate(merged):
            if _same_update(old, u):
                merged[i] = _fill(old, u)
                break
        else:
            if u.published_at is None:
                u = replace(u, published_at=now)   # a feed without times: when we saw it
            merged.append(u)
            added.append(u)
    merged.sort(key=_sort_key)
    return merged, added


def _merge_components(base: tuple[ComponentRec, ...], incoming: list[ComponentRec],
                      names: dict[str, str]) -> tuple[ComponentRec, ...]:
    by_key = {c.key: c for c in base}
    by_name = {}
    for c in by_key.values():
        by_name.setdefault(c.name.lower(), c.key)
    name_to_id = {}
    for cid, nm in names.items():
        name_to_id.setdefault(nm.lower(), []).append(cid)
    for c in incoming:
        key = c.key
        name = c.name or names.get(c.key, "")
        if key not in by_key and name.lower() in by_name:
            key = by_name[name.lower()]          # same component, seen by name in a feed
        elif key not in by_key and key == name and len(name_to_id.get(name.lower(), ())) == 1:
            key = name_to_id[name.lower()][0]    # a feed name that names exactly one component
        old = by_key.get(key)
        impact = c.impact
        if old is not None:
            if old.impact and (not impact or _component_rank(old.impact) >= _component_rank(impact)):
                impact = old.impact
            name = old.name or name
        by_key[key] = ComponentRec(key=key, name=name or names.get(key, key), impact=impact)
        if name:
            by_name.setdefault(name.lower(), key)
    return tuple(sorted(by_key.values(), key=lambda c: (c.name.lower(), c.key)))


def _component_rank(component_impact: str | None) -> int:
    return impact_rank(norm_impact(component_impact))


def merge(previous: IncidentState | None, recs: list[IncidentRec], now: datetime,
          component_names: dict[str, str] | None = None) -> Change:
    """Fold `recs` (any sources, any order) into `previous`. Pure."""
    names = component_names or {}
    recs = sorted(recs, key=lambda r: SOURCE_PRIORITY.get(r.source, 9))
    prev = previous or IncidentState(page_incident_id=recs[0].page_incident_id)

    updates, added = _merge_updates(list(prev.updates), [u for r in recs for u in r.updates], now)
    title = next((r.title for r in recs if r.title), "") or prev.title
    url = next((r.url for r in recs if r.url), None) or prev.url

    dated = [u for u in updates if u.status]
    # no source names a status it knows: "unknown" (never open, never resolved), not "investigating"
    fallback = prev.status if previous is not None else UNKNOWN_STATUS
    status = dated[-1].status if dated else (next((r.status for r in recs if r.status), None) or fallback)
    components = _merge_components(prev.components, [c for r in recs for c in r.components], names)
    impact = _impact(previous, recs, components)

    starts = [t for t in [prev.started_at, *(r.started_at for r in recs)] if t]
    starts += [u.published_at for u in updates[:1] if u.published_at]
    started_at = min(starts) if starts else None
    resolved_at = None
    if status in CLOSED_STATUSES:
        resolved_at = _resolved_at(prev, updates, recs, now)
    ups = [t for t in [prev.updated_at, *(r.updated_at for r in recs)] if t]
    state = IncidentState(
        page_incident_id=prev.page_incident_id, title=title, url=url, status=status,
        impact=impact or "none", started_at=started_at, resolved_at=resolved_at,
        updated_at=max(ups) if ups else None, updates=tuple(updates), components=components,
        sources=prev.sources | {r.source for r in recs},
        full_timeline=prev.full_timeline or any(r.full_timeline for r in recs),
        scheduled_until=next((r.scheduled_until for r in recs if r.scheduled_until), None) or prev.scheduled_until,
    )
    event = _event(previous, state, added)
    return Change(state=state, previous=previous, event=event, new_updates=tuple(added),
                  changed=state != previous)


def _impact(previous: IncidentState | None, recs: list[IncidentRec], components) -> str:
    """The best-ranked source's impact (recs are in SOURCE_PRIORITY order). A stored impact stays unless a
    source ranked at least as high as every source that has shown the incident says otherwise; a new
    incident no source gives an impact for gets its components' worst."""
    given = [r for r in recs if r.impact]
    if given:
        best = given[0]
        if previous is None:
            return best.impact
        ranked_before = min((SOURCE_PRIORITY.get(x, 9) for x in previous.sources), default=9)
        if SOURCE_PRIORITY.get(best.source, 9) <= ranked_before:
            return best.impact
        return previous.impact
    if previous is not None:
        return previous.impact
    return worst_impact(norm_impact(c.impact) for c in components)


def _resolved_at(prev: IncidentState, updates: list[UpdateRec], recs: list[IncidentRec], now: datetime):
    """When the incident's latest resolution happened: the first "resolved" update after its last open one.
    Without such an update, the stored time (unless it reopened since) or a source's, else now."""
    last_open = _last_open(updates)
    rs = [u.published_at for u in updates[last_open + 1:] if u.status == "resolved" and u.published_at]
    if rs:
        return min(rs)
    reopened_at = updates[last_open].published_at if last_open >= 0 else None
    def after(t):
        return t and (reopened_at is None or t > reopened_at)
    if after(prev.resolved_at):
        return prev.resolved_at
    rr = [r.resolved_at for r in recs if after(r.resolved_at)]
    return min(rr) if rr else now


def _event(prev: IncidentState | None, new: IncidentState, added: list[UpdateRec]) -> str | None:
    """What people are told. A maintenance only announced (scheduled), or an incident in a status nobody
    knows, is told nothing; it is "opened" when it gets under way."""
    if prev is None or not (prev.is_open or prev.status in CLOSED_STATUSES):
        if new.is_open:
            return "opened"
        return "resolved" if prev is None and new.status in CLOSED_STATUSES else None
    if new.status == "resolved" and (prev.is_open or (new.reopened and new.resolved_at != prev.resolved_at)):
        return "resolved"   # also when it reopened and was resolved again between two polls
    if added or new.status != prev.status:
        return "updated"
    return None
