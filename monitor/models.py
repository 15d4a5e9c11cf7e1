"""The ORM over the store's tables (tables.py): the classes the write path of a poll, retag, delivery and the
commands that show one incident work with. Imported only where there is something to write or show: a poll
that learns nothing new, and the read commands, get by with tables.py and plain SQL."""
from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase, relationship

from monitor import tables


class Base(DeclarativeBase):
    metadata = tables.metadata


class Page(Base):
    """A watched status page and the health of its polling."""
    __table__ = tables.pages


class SourceState(Base):
    """Validators and body hash of one fetched URL."""
    __table__ = tables.source_states


class Component(Base):
    """A component of a page, keyed by the page's own id."""
    __table__ = tables.components


class Incident(Base):
    __table__ = tables.incidents

    page = relationship("Page", lazy="joined")
    updates = relationship("Update", back_populates="incident", cascade="all, delete-orphan",
                           order_by="Update.published_at")
    components = relationship("IncidentComponent", cascade="all, delete-orphan")
    tags = relationship("Tag", cascade="all, delete-orphan")
    surfaces = relationship("Surface", cascade="all, delete-orphan")


class Update(Base):
    __table__ = tables.updates
    incident = relationship("Incident", back_populates="updates")


class IncidentComponent(Base):
    """A component an incident affected, with the worst impact the page reported for it."""
    __table__ = tables.incident_components


class Tag(Base):
    """Why an incident counts as upload-related: the tag, the rule and the text it matched."""
    __table__ = tables.tags


class Surface(Base):
    """A surface the incident takes down broadly: the rule and the text that said so."""
    __table__ = tables.surfaces


class Outbox(Base):
    """A message decided in the same transaction as the change it reports; delivered later, once per key."""
    __table__ = tables.outbox


class Delivery(Base):
    """One attempt to deliver an outbox row."""
    __table__ = tables.deliveries


class Leader(Base):
    """The `monitor run` that polls and delivers (one row, id 1); see leader.py."""
    __table__ = tables.leader


class ProbeResult(Base):
    """One probe of the OpenAI Files API (never holds the key)."""
    __table__ = tables.probe_results


class ProbeOutage(Base):
    """A run of probe failures on OpenAI's side, from the first failure to the next good probe."""
    __table__ = tables.probe_outages
