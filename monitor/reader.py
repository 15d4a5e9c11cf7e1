"""Read-only SQL on a store, for the read commands (`status`, `history`, `show`, `outbox`, `report`): plain
SQL on the standard library's sqlite3 for a SQLite file, so that they answer without importing SQLAlchemy
(whose import alone takes longer than such a command does), and the same SQL through SQLAlchemy Core for
PostgreSQL and inside the service's own transactions."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

from monitor.db import (
    StoreError, describe_error, make_engine, naive_utc, plain_sqlite_path, safe_error, sqlite_connect, sqlite_time,
    stored_time,
)
from monitor.records import iso_z

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


class Reader:
    """Read-only SQL on a store: `rows(sql, params)` with `:name` parameters, in one deferred transaction
    per `with` block (readers never block the daemon). Times go in and come out as aware UTC datetimes,
    as the ORM's UTC column type has them. Over sqlite3 for a SQLite file, else over an SQLAlchemy engine
    (for the service, and for PostgreSQL)."""

    def __init__(self, *, path: str | None = None, engine: Engine | None = None, connection=None):
        self._path, self._engine, self._conn, self._sa = path, engine, None, connection
        self._own_engine = False      # close() disposes only an engine open() made
        self._borrowed = connection is not None   # inside a transaction the caller holds: no BEGIN of ours

    @classmethod
    def open(cls, url: str) -> Reader:
        path = plain_sqlite_path(url)
        if path:
            return cls(path=path)
        reader = cls(engine=make_engine(url, readonly=True))
        reader._own_engine = True
        return reader

    def revision(self) -> str | None:
        """The store's schema revision (one query); None when it has none yet (no alembic_version table, or
        no SQLite file yet): then it needs migrating. A store that exists but cannot be read (a directory, not
        a database, a WAL store in a directory we cannot write, a server that refuses us) is a StoreError
        `cannot read the store PATH: reason`: migrating could not help, and must not be tried."""
        try:
            with self:
                rows = self.rows("SELECT version_num FROM alembic_version")
        except Exception as exc:
            if describe_error(exc) is None:
                raise
            if _no_version_table(exc) or (self._path is not None and not os.path.lexists(self._path)):
                return None
            self.close()
            if self._path is not None:
                where = self._path
                reason = "it is a directory" if os.path.isdir(self._path) else safe_error(exc)
            else:
                where, reason = self._engine.url.render_as_string(hide_password=True), safe_error(exc)
            raise StoreError(f"cannot read the store {where}: {reason}") from None
        return rows[0][0] if rows else None

    def __enter__(self) -> Reader:
        if self._borrowed:
            return self
        if self._path is not None:
            if self._conn is None:
                self._conn = sqlite_connect(self._path)
            self._conn.execute("BEGIN")
        else:
            self._sa = self._engine.connect()
            self._sa.begin()
        return self

    def __exit__(self, *exc) -> None:
        if self._borrowed:
            return
        if self._path is not None:
            self._conn.execute("ROLLBACK")
        else:
            self._sa.close()
            self._sa = None

    def rows(self, sql: str, params: dict | None = None) -> list[tuple]:
        params = {k: self._bind(v) for k, v in (params or {}).items()}
        if self._path is not None:
            return self._conn.execute(sql, params).fetchall()
        from sqlalchemy import text

        return [tuple(r) for r in self._sa.execute(text(sql), params)]

    def _bind(self, v):
        # as SQLAlchemy's SQLite DateTime stores it, so that comparisons on the text agree
        return sqlite_time(v) if self._path is not None else naive_utc(v)

    time = staticmethod(stored_time)     # a stored time as an aware UTC datetime

    @classmethod
    def iso(cls, v) -> str | None:
        """A stored time as records.iso_z() writes it. SQLite's text in SQLAlchemy's storage format
        (`YYYY-MM-DD HH:MM:SS.ffffff`) is rewritten as text (20,000 incidents: 40,000 datetimes less);
        anything else goes through a datetime."""
        if isinstance(v, str) and len(v) == 26 and v[10] == " " and v[19] == ".":
            return f"{v[:10]}T{v[11:19] if v.endswith('000000') else v[11:]}Z"
        return iso_z(cls.time(v))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        elif self._own_engine:
            self._engine.dispose()


def _no_version_table(exc: BaseException) -> bool:
    """The error says the alembic_version table does not exist (a store never migrated)."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) == "42P01" or getattr(orig, "pgcode", None) == "42P01":  # undefined_table
        return True
    message = str(orig)
    return "alembic_version" in message and ("no such table" in message or "exist" in message)


def in_list(name: str, values: Sequence) -> tuple[str, dict]:
    """`(:name0, :name1, ...)` and its parameters, for an IN over a list of values."""
    params = {f"{name}{i}": v for i, v in enumerate(values)}
    return "(" + ", ".join(":" + k for k in params) + ")" if params else "(NULL)", params
