"""Pure merging: the records several sources give for one incident, plus what is stored, become one incident
state, and we say what changed. No I/O here.

Rules (each one answers a way a real page misleads a naive poller):
- the status is that of the newest update in the merged timeline, so a stale source cannot reopen or
  re-resolve an incident, and an in-place feed item rewritten with the same text is no change;
- an update is the same update when its page id matches, its text matches (ignoring markup), or it has the
  same status close in time while one side has no text; a text once stored is never replaced by an empty one;
- a feed item's component list is live state, not history, and never removes components.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from monitor.records import OPEN_STATUSES, ComponentRec, IncidentRec, UpdateRec
from monitor.sources.common import norm_impact, text_key

IMPACT_RANK = {"none": 0, "minor": 1, "major": 2, "critical": 3}
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

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def latest_update(self) -> UpdateRec | None:
        return self.updates[-1] if self.updates else None


@dataclass(frozen=True, slots=True)
class Change:
    """A merged incident and what is new about it. `event` is what people are told (or None)."""

    state: IncidentState
    previous: IncidentState | None
    event: str | None                    # opened | updated | resolved | None
    new_updates: tuple[UpdateRec, ...] = ()
    changed: bool = True                 # False: nothing to write
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def dedupe_key(self) -> str:
        """Names this change for the outbox: the same change seen again (restart, re-poll, another
        source) gets the same key, so it is never sent twice."""
        s = self.state
        if self.event == "opened":
            return f"{s.page_incident_id}:opened"
        if self.event == "resolved":
            return f"{s.page_incident_id}:resolved:{_iso(s.resolved_at)}"
        last = s.latest_update()
        ident = (last.page_update_id or f"{last.status}:{_iso(last.published_at)}:{text_key(last.body)[:60]}"
                 if last else s.status)
        return f"{s.page_incident_id}:updated:{ident}"


def _iso(t: datetime | None) -> str:
    return t.isoformat() if t else "-"


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
            if old.impact and (not impact or _impact_rank(old.impact) >= _impact_rank(impact)):
                impact = old.impact
            name = old.name or name
        by_key[key] = ComponentRec(key=key, name=name or names.get(key, key), impact=impact)
        if name:
            by_name.setdefault(name.lower(), key)
    return tuple(sorted(by_key.values(), key=lambda c: (c.name.lower(), c.key)))


def _impact_rank(component_impact: str | None) -> int:
    return IMPACT_RANK[_impact_name(component_impact)]


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
    status = dated[-1].status if dated else (next((r.status for r in recs if r.status), None) or prev.status)
    impact_candidates = [r.impact for r in recs if r.impact]
    impact = impact_candidates[0] if impact_candidates else prev.impact
    components = _merge_components(prev.components, [c for r in recs for c in r.components], names)
    if not impact_candidates and previous is None:
        impact = max((_impact_name(c.impact) for c in components), key=IMPACT_RANK.get, default="none")

    starts = [t for t in [prev.started_at, *(r.started_at for r in recs)] if t]
    starts += [u.published_at for u in updates[:1] if u.published_at]
    started_at = min(starts) if starts else None
    resolved_at = None
    if status in ("resolved", "postmortem"):
        rs = [u.published_at for u in updates if u.status == "resolved" and u.published_at]
        rr = [r.resolved_at for r in recs if r.resolved_at]
        resolved_at = prev.resolved_at or (min(rs) if rs else (min(rr) if rr else now))
    ups = [t for t in [prev.updated_at, *(r.updated_at for r in recs)] if t]
    state = IncidentState(
        page_incident_id=prev.page_incident_id, title=title, url=url, status=status,
        impact=impact or "none", started_at=started_at, resolved_at=resolved_at,
        updated_at=max(ups) if ups else None, updates=tuple(updates), components=components,
        sources=prev.sources | {r.source for r in recs},
        full_timeline=prev.full_timeline or any(r.full_timeline for r in recs),
    )
    event = _event(previous, state, added)
    return Change(state=state, previous=previous, event=event, new_updates=tuple(added),
                  changed=state != previous)


def _impact_name(component_impact: str | None) -> str:
    return norm_impact(component_impact) or "none"


def _event(prev: IncidentState | None, new: IncidentState, added: list[UpdateRec]) -> str | None:
    if prev is None:
        return "opened" if new.is_open else "resolved"
    if new.status == "resolved" and prev.is_open:
        return "resolved"
    if added or new.status != prev.status:
        return "updated"
    return None
