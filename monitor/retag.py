"""Re-apply the tag and broad-outage rules to everything stored, in batches, each its own transaction."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from monitor import store
from monitor.db import transaction
from monitor.models import Incident
from monitor.surfaces import DEFAULT_SURFACE_RULES


def retag_all(engine, rules, batch: int = 500, surface_rules=None) -> tuple[int, int]:
    """(incidents whose tags or surfaces changed, incidents read)."""
    surface_rules = DEFAULT_SURFACE_RULES if surface_rules is None else surface_rules
    changed = total = 0
    last_id = 0
    while True:
        with transaction(engine) as s:
            rows = s.scalars(select(Incident).where(Incident.id > last_id).order_by(Incident.id).limit(batch)
                             .options(selectinload(Incident.updates), selectinload(Incident.components),
                                      selectinload(Incident.tags), selectinload(Incident.surfaces))).all()
            if not rows:
                return changed, total
            for row in rows:
                before = ({(t.tag, t.rule, t.field, t.text) for t in row.tags},
                          {(x.surface, x.rule, x.field, x.text) for x in row.surfaces})
                state = store.to_state(row)
                matches = store.compute_tags(rules, state)
                surfaces = store.compute_surfaces(surface_rules, state)
                store.write_tags(row, matches)
                store.write_surfaces(row, surfaces)
                changed += before != ({(m.tag, m.rule, m.field, m.text) for m in matches},
                                      {(m.tag, m.rule, m.field, m.text) for m in surfaces})
                total += 1
            last_id = rows[-1].id
