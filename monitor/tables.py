"""The store's tables, in SQLAlchemy Core: what a poll that learns nothing new reads and writes (a page's row,
its sources' validators, the outbox's due rows) needs no more than these. The ORM classes in models.py are
mapped onto the same tables, and imported only where a poll or a command has something to write or show.
Every schema change goes through a migration in migrations/versions.

Text, never VARCHAR(n), for what a page or a config sends: PostgreSQL enforces lengths that SQLite ignores,
and a long component name must not fail a poll on one of them only."""
from __future__ import annotations

from datetime import timezone

from sqlalchemy import (
    Boolean, Column, DateTime, ForeignKey, Index, Integer, MetaData, Table, Text, TypeDecorator, UniqueConstraint,
)


class UTC(TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out (SQLite would drop the offset)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=timezone.utc)


metadata = MetaData()


def _id() -> Column:
    return Column("id", Integer, primary_key=True)


def _incident_fk() -> Column:
    return Column("incident_id", Integer, ForeignKey("incidents.id", ondelete="CASCADE"), nullable=False)


# A watched status page and the health of its polling.
pages = Table(
    "pages", metadata, _id(),
    Column("name", Text, nullable=False, unique=True),
    Column("base_url", Text, nullable=False),
    Column("kind", Text),                       # statuspage | incidentio
    Column("first_poll_at", UTC),
    Column("last_poll_at", UTC),
    Column("last_success_at", UTC),
    Column("last_outcome", Text),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("not_before", UTC),                  # Retry-After / our back-off
    Column("backfilled_since", UTC),
    Column("time_zone", Text),                  # the page's own (Atlassian feeds' times)
)

# Validators and body hash of one fetched URL, so an unchanged source is neither re-parsed nor re-written.
source_states = Table(
    "source_states", metadata, _id(),
    Column("page_id", Integer, ForeignKey("pages.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),
    Column("etag", Text),
    Column("last_modified", Text),
    Column("body_hash", Text),
    Column("fetched_at", UTC),
    Column("last_error", Text),
    UniqueConstraint("page_id", "path"),
)

# A component of a page, keyed by the page's own id (two components may share a name).
components = Table(
    "components", metadata, _id(),
    Column("page_id", Integer, ForeignKey("pages.id", ondelete="CASCADE"), nullable=False),
    Column("key", Text, nullable=False),        # the page's component id, or the name
    Column("name", Text, nullable=False),
    Column("status", Text),
    UniqueConstraint("page_id", "key"),
)

incidents = Table(
    "incidents", metadata, _id(),
    Column("page_id", Integer, ForeignKey("pages.id", ondelete="CASCADE"), nullable=False),
    Column("page_incident_id", Text, nullable=False),
    Column("title", Text, nullable=False, default=""),
    Column("url", Text),
    Column("status", Text, nullable=False, default="investigating"),
    Column("impact", Text, nullable=False, default="none"),
    Column("started_at", UTC),
    Column("resolved_at", UTC),
    Column("page_updated_at", UTC),
    Column("first_seen_at", UTC, nullable=False),
    Column("last_seen_at", UTC, nullable=False),
    Column("sources", Text, nullable=False, default=""),     # comma list of the sources that showed it
    Column("timeline_complete", Boolean, nullable=False, default=False),
    Column("scheduled_until", UTC),                          # a maintenance's planned end
    UniqueConstraint("page_id", "page_incident_id"),
    Index("ix_incidents_page_started", "page_id", "started_at"),
    Index("ix_incidents_started", "started_at"),
)

updates = Table(
    "updates", metadata, _id(), _incident_fk(),
    Column("page_update_id", Text),
    Column("status", Text),
    Column("body", Text, nullable=False, default=""),
    Column("published_at", UTC),
    Column("source", Text, nullable=False),     # api | feed | proxy | ...
    Column("first_seen_at", UTC, nullable=False),
    Index("ix_updates_incident", "incident_id"),
)

# A component an incident affected, with the worst impact the page reported for it.
incident_components = Table(
    "incident_components", metadata, _id(), _incident_fk(),
    Column("key", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("impact", Text),
    UniqueConstraint("incident_id", "key"),
)

def _evidence(name: str, key: str) -> Table:
    """A table of evidence about incidents: one row per incident and `key`, with the rule and the text that
    gave it."""
    return Table(
        name, metadata, _id(), _incident_fk(),
        Column(key, Text, nullable=False),
        Column("rule", Text, nullable=False),
        Column("field", Text, nullable=False),
        Column("text", Text, nullable=False),
        UniqueConstraint("incident_id", key),
        Index(f"ix_{name}_{key}", key),
    )


# Why an incident counts as upload-related: the tag, the rule and the text it matched.
tags = _evidence("tags", "tag")
# A surface (chatgpt, api, ...) the incident takes down broadly: the rule and the text that said so.
surfaces = _evidence("surfaces", "surface")

# A message decided in the same transaction as the change it reports; delivered later, once per key.
outbox = Table(
    "outbox", metadata, _id(),
    Column("incident_id", Integer, ForeignKey("incidents.id", ondelete="SET NULL")),
    Column("notifier", Text, nullable=False),
    Column("event", Text, nullable=False),      # opened | updated | resolved | test
    Column("dedupe_key", Text, nullable=False),
    Column("payload", Text, nullable=False),    # JSON snapshot of what the message says
    Column("state", Text, nullable=False, default="pending"),   # pending | sent | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", UTC, nullable=False),
    Column("next_attempt_at", UTC, nullable=False),
    Column("sent_at", UTC),
    Column("last_error", Text),
    Column("leased_by", Text),                  # token of the process sending it now
    UniqueConstraint("notifier", "dedupe_key"),
    Index("ix_outbox_state_due", "state", "next_attempt_at"),
)

# One attempt to deliver an outbox row: the single place where delivery errors are recorded.
deliveries = Table(
    "deliveries", metadata, _id(),
    Column("outbox_id", Integer, ForeignKey("outbox.id", ondelete="CASCADE"), nullable=False),
    Column("at", UTC, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("permanent", Boolean, nullable=False, default=False),
    Column("error", Text),
    Index("ix_deliveries_outbox", "outbox_id"),
)

# The `monitor run` that polls and delivers (one row, id 1); the lock that makes it leader is in leader.py.
leader = Table(
    "leader", metadata, _id(),
    Column("token", Text, nullable=False),      # unique per process: outbox.leased_by of its sends
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("since", UTC, nullable=False),
)

# One probe of the OpenAI Files API: outcome, whose fault a failure was, each step's latency and HTTP status.
probe_results = Table(
    "probe_results", metadata, _id(),
    Column("started_at", UTC, nullable=False),
    Column("finished_at", UTC, nullable=False),
    Column("outcome", Text, nullable=False),           # ok | failed
    Column("failure_class", Text),                     # openai | user | local
    Column("step", Text),
    Column("detail", Text),
    *(Column(f"{step}_{what}", Integer) for step in ("upload", "retrieve", "content", "delete")
      for what in ("ms", "status")),
    Index("ix_probe_results_started", "started_at"),
)

# A run of probe failures on OpenAI's side, from the first failure to the next good probe.
probe_outages = Table(
    "probe_outages", metadata, _id(),
    Column("first_failure_at", UTC, nullable=False),
    Column("last_failure_at", UTC, nullable=False),
    Column("consecutive", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("statuses", Text, nullable=False, default=""),
    Column("detail", Text),
    Column("warned_at", UTC),
    Column("ended_at", UTC),
    Column("all_clear", Boolean, nullable=False, default=False),
    Index("ix_probe_outages_first", "first_failure_at"),
)
