"""Re-apply the tag rules to everything stored, in batches, each its own transaction."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from monitor import store
from monitor.db import transaction
from monitor.models import Incident


def retag_all(engine, rules, batch: int = 500) -> tuple[int, int]:
    changed = total = 0
    last_id = 0
    while True:
        with transaction(engine) as s:
            rows = s.scalars(select(Incident).where(Incident.id > last_id).order_by(Incident.id).limit(batch)
                             .options(selectinload(Incident.updates), selectinload(Incident.components),
                                      selectinload(Incident.tags))).all()
            if not rows:
                return changed, total
            for row in rows:
                before = {(t.tag, t.rule, t.field, t.text) for t in row.tags}
                matches = store.compute_tags(rules, store.to_state(row))
                store.write_tags(row, matches)
                changed += before != {(m.tag, m.rule, m.field, m.text) for m in matches}
                total += 1
            last_id = rows[-1].id
