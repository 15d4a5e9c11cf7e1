"""Tables of the store. Every schema change goes through a migration in migrations/versions.

Text, never VARCHAR(n), for what a page or a config sends: PostgreSQL enforces lengths that SQLite ignores,
and a long component name must not fail a poll on one of them only."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    Boolean, DateTime, ForeignKey, Index, Integer, Text, TypeDecorator, UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


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


class Base(DeclarativeBase):
    pass


class Page(Base):
    """A watched status page and the health of its polling."""

    __tablename__ = "pages"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    base_url: Mapped[str] = mapped_column(Text)
    kind: Mapped[str | None] = mapped_column(Text)          # statuspage | incidentio
    first_poll_at: Mapped[datetime | None] = mapped_column(UTC)
    last_poll_at: Mapped[datetime | None] = mapped_column(UTC)
    last_success_at: Mapped[datetime | None] = mapped_column(UTC)
    last_outcome: Mapped[str | None] = mapped_column(Text)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime | None] = mapped_column(UTC)      # Retry-After / backoff
    backfilled_since: Mapped[datetime | None] = mapped_column(UTC)
    time_zone: Mapped[str | None] = mapped_column(Text)     # the page's own (Atlassian feeds' times)


class SourceState(Base):
    """Validators and body hash of one fetched URL, so an unchanged source is neither re-parsed nor re-written."""

    __tablename__ = "source_states"
    __table_args__ = (UniqueConstraint("page_id", "path"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    body_hash: Mapped[str | None] = mapped_column(Text)
    fetched_at: Mapped[datetime | None] = mapped_column(UTC)
    last_error: Mapped[str | None] = mapped_column(Text)


class Component(Base):
    """A component of a page, keyed by the page's own id (two components may share a name)."""

    __tablename__ = "components"
    __table_args__ = (UniqueConstraint("page_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)                 # the page's component id, or the name
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(Text)


class Incident(Base):
    __tablename__ = "incidents"
    __table_args__ = (
        UniqueConstraint("page_id", "page_incident_id"),
        Index("ix_incidents_page_started", "page_id", "started_at"),
        Index("ix_incidents_started", "started_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"))
    page_incident_id: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text, default="")
    url: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, default="investigating")
    impact: Mapped[str] = mapped_column(Text, default="none")
    started_at: Mapped[datetime | None] = mapped_column(UTC)
    resolved_at: Mapped[datetime | None] = mapped_column(UTC)
    page_updated_at: Mapped[datetime | None] = mapped_column(UTC)
    first_seen_at: Mapped[datetime] = mapped_column(UTC)
    last_seen_at: Mapped[datetime] = mapped_column(UTC)
    sources: Mapped[str] = mapped_column(Text, default="")     # comma list of the sources that showed it
    timeline_complete: Mapped[bool] = mapped_column(Boolean, default=False)
    scheduled_until: Mapped[datetime | None] = mapped_column(UTC)    # a maintenance's planned end

    page: Mapped[Page] = relationship(lazy="joined")
    updates: Mapped[list[Update]] = relationship(
        back_populates="incident", cascade="all, delete-orphan", order_by="Update.published_at")
    components: Mapped[list[IncidentComponent]] = relationship(cascade="all, delete-orphan")
    tags: Mapped[list[Tag]] = relationship(cascade="all, delete-orphan")
    surfaces: Mapped[list[Surface]] = relationship(cascade="all, delete-orphan")


class Update(Base):
    __tablename__ = "updates"
    __table_args__ = (Index("ix_updates_incident", "incident_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    page_update_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text, default="")
    published_at: Mapped[datetime | None] = mapped_column(UTC)
    source: Mapped[str] = mapped_column(Text)                    # api | feed | proxy | ...
    first_seen_at: Mapped[datetime] = mapped_column(UTC)
    incident: Mapped[Incident] = relationship(back_populates="updates")


class IncidentComponent(Base):
    """A component an incident affected, with the worst impact the page reported for it."""

    __tablename__ = "incident_components"
    __table_args__ = (UniqueConstraint("incident_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    impact: Mapped[str | None] = mapped_column(Text)


class Tag(Base):
    """Why an incident counts as upload-related: the tag, the rule and the text it matched."""

    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("incident_id", "tag"), Index("ix_tags_tag", "tag"))
    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    tag: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(Text)
    field: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)


class Surface(Base):
    """A surface (chatgpt, api, ...) the incident takes down broadly: the rule and the text that said so."""

    __tablename__ = "surfaces"
    __table_args__ = (UniqueConstraint("incident_id", "surface"), Index("ix_surfaces_surface", "surface"))
    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    surface: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(Text)
    field: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)


class Outbox(Base):
    """A message decided in the same transaction as the change it reports; delivered later, exactly once per key."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("notifier", "dedupe_key"),
        Index("ix_outbox_state_due", "state", "next_attempt_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id", ondelete="SET NULL"))
    notifier: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(Text)                    # opened | updated | resolved | test
    dedupe_key: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)                         # JSON snapshot of what the message says
    state: Mapped[str] = mapped_column(Text, default="pending")  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTC)
    next_attempt_at: Mapped[datetime] = mapped_column(UTC)
    sent_at: Mapped[datetime | None] = mapped_column(UTC)
    last_error: Mapped[str | None] = mapped_column(Text)
    leased_by: Mapped[str | None] = mapped_column(Text)                # token of the process sending it now


class Delivery(Base):
    """One attempt to deliver an outbox row: the single place where delivery errors are recorded."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_outbox", "outbox_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTC)
    ok: Mapped[bool] = mapped_column(Boolean)
    permanent: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)


class Leader(Base):
    """The `monitor run` that polls and delivers (one row, id 1): who it is and since when (its last poll is the
    pages' newest since then). Written by each service that becomes leader; the lock that makes it leader is
    held elsewhere (see leader.LeaderLock)."""

    __tablename__ = "leader"
    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(Text)           # unique per process: outbox.leased_by of its sends
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    since: Mapped[datetime] = mapped_column(UTC)


class ProbeResult(Base):
    """One probe of the OpenAI Files API: its outcome, whose fault a failure was, and each step's latency
    and HTTP status (null when the step was not reached or got no answer). Never holds the key."""

    __tablename__ = "probe_results"
    __table_args__ = (Index("ix_probe_results_started", "started_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTC)
    finished_at: Mapped[datetime] = mapped_column(UTC)                 # when the result was known
    outcome: Mapped[str] = mapped_column(Text)                   # ok | failed
    failure_class: Mapped[str | None] = mapped_column(Text)      # openai | user | local
    step: Mapped[str | None] = mapped_column(Text)               # the step that failed
    detail: Mapped[str | None] = mapped_column(Text)                   # one line, e.g. "upload: HTTP 503 ..."
    upload_ms: Mapped[int | None] = mapped_column(Integer)
    upload_status: Mapped[int | None] = mapped_column(Integer)
    retrieve_ms: Mapped[int | None] = mapped_column(Integer)
    retrieve_status: Mapped[int | None] = mapped_column(Integer)
    content_ms: Mapped[int | None] = mapped_column(Integer)
    content_status: Mapped[int | None] = mapped_column(Integer)
    delete_ms: Mapped[int | None] = mapped_column(Integer)
    delete_status: Mapped[int | None] = mapped_column(Integer)


class ProbeOutage(Base):
    """A run of probe failures on OpenAI's side, from the first failure to the next good probe: what the
    early warning and its all-clear are decided on, and what `show`/`history` compare a page's incident with."""

    __tablename__ = "probe_outages"
    __table_args__ = (Index("ix_probe_outages_first", "first_failure_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    first_failure_at: Mapped[datetime] = mapped_column(UTC)
    last_failure_at: Mapped[datetime] = mapped_column(UTC)
    consecutive: Mapped[int] = mapped_column(Integer, default=0)       # OpenAI-side failures in a row, now
    failures: Mapped[int] = mapped_column(Integer, default=0)          # all OpenAI-side failures in it
    statuses: Mapped[str] = mapped_column(Text, default="")     # HTTP statuses seen, e.g. "500,503"
    detail: Mapped[str | None] = mapped_column(Text)                   # the latest failure, one line
    warned_at: Mapped[datetime | None] = mapped_column(UTC)            # early warning queued
    ended_at: Mapped[datetime | None] = mapped_column(UTC)             # the next good probe
    all_clear: Mapped[bool] = mapped_column(Boolean, default=False)    # all-clear queued
