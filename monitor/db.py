"""Engines and transactions. SQLite runs in WAL mode with a busy timeout, and writers take the lock up front
(BEGIN IMMEDIATE) so two processes never lose an update or fail with "database is locked"; a store this
user may only read is opened read-only. Also the one-line wording of database errors and URLs.

Elsewhere: migrations in migrate.py, the leader lock in leader.py, read-only SQL in reader.py."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session


BUSY_TIMEOUT_MS = 30_000

# libpq's TCP keepalives on every PostgreSQL connection: a dead peer is noticed in about 10 + 3 * 5 = 25 s.
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
# Database URLs of a SQLite file that the standard library's sqlite3 opens as it is (no driver to load).
SQLITE_FILE_PREFIXES = ("sqlite:///", "sqlite+pysqlite:///")


MIN_SQLITE = (3, 35)   # UPDATE ... RETURNING (outbox claims, failure counts)


def check_sqlite_version() -> None:
    """ValueError when the SQLite library Python uses is older than MIN_SQLITE."""
    import sqlite3

    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise ValueError(f"SQLite {sqlite3.sqlite_version} is too old: the monitor needs "
                         f"{'.'.join(map(str, MIN_SQLITE))} or newer (UPDATE ... RETURNING); "
                         "use a newer Python build or PostgreSQL")


class StoreError(Exception):
    """The store cannot be opened, migrated or written (one-line message)."""


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """An engine for `url`. `readonly` engines start deferred transactions: readers never block the daemon."""
    from sqlalchemy import create_engine, event

    if url.startswith("sqlite"):
        path = sqlite_path(url)
        ro = readonly and path is not None and read_only_mode(path) is not None
        kw = {"creator": lambda: sqlite_connect(path)} if ro else {}   # a store this user may only read
        eng = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, **kw)

        @event.listens_for(eng, "connect")
        def _connect(dbapi_conn, _rec):
            dbapi_conn.isolation_level = None  # SQLAlchemy, not pysqlite, emits BEGIN
            for pragma in ((f"busy_timeout={BUSY_TIMEOUT_MS}",) if ro else (
                    "journal_mode=WAL", f"busy_timeout={BUSY_TIMEOUT_MS}", "foreign_keys=ON", "synchronous=NORMAL")):
                dbapi_conn.execute(f"PRAGMA {pragma}")

        @event.listens_for(eng, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return eng
    return create_engine(url, pool_pre_ping=True,
                         connect_args=PG_KEEPALIVES if url.startswith("postgresql") else {})


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One explicit transaction: committed on success, rolled back on any error."""
    # a Session, not sessionmaker(...).begin(): sessionmaker() builds a new Session subclass on every call
    from sqlalchemy.orm import Session

    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite store (None for other databases and for an in-memory SQLite)."""
    from sqlalchemy.engine import make_url

    try:
        path = make_url(url).database if url.startswith("sqlite") else None
    except Exception:
        return None
    return None if not path or path == ":memory:" else path


def describe_error(exc: BaseException) -> str | None:
    """The one-line message for an error of the database layer (SQLAlchemy's or sqlite3's), else None.
    SQLAlchemy's errors are recognised without importing it: a process that never loaded it cannot
    have raised one."""
    import sqlite3

    sa = sys.modules.get("sqlalchemy.exc")
    if isinstance(exc, sqlite3.Error) or (sa is not None and isinstance(exc, sa.SQLAlchemyError)):
        return f"database: {safe_error(exc)}"
    return None


def safe_error(exc: Exception) -> str:
    """The database driver's own one-line message (no SQL, no parameters, no URL)."""
    orig = getattr(exc, "orig", None)
    if orig is None and type(exc).__module__ == "sqlite3":
        orig = exc
    return (str(orig).splitlines() or [""])[0] if orig is not None else type(exc).__name__


def safe_url(url: str) -> str:
    """The database URL with any password masked, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database url>"


# ------------------------------------------------------------------------------------------- read-only


def writable(path: str) -> bool:
    """This user may write the SQLite store at `path`: the file, and its directory (journal, -wal, -shm)."""
    return os.access(path, os.W_OK) and os.access(os.path.dirname(os.path.abspath(path)) or ".", os.W_OK)


def read_only_mode(path: str) -> str | None:
    """How this user reads a SQLite store it may not write (None: it may write it, or it does not exist).

    * "ro": `-shm` exists, so a process has the store open (the service, or one that crashed): SQLite reads
      it, with what is still in the `-wal`, through the shared memory it may read but not write.
    * "immutable": no `-shm`: no process has the store open (SQLite removes `-wal` and `-shm` when the last
      connection closes), so the file alone is the whole store; read as immutable, since a read-only user
      cannot create the `-shm` an ordinary reader needs. A writer that starts during such a read is not
      seen by it (that read answers from the store as it was when the service stopped).
    SQLite itself cannot say whether a writer runs; the `-shm` file is what tells."""
    if not os.path.exists(path) or writable(path):
        return None
    return "ro" if os.path.exists(path + "-shm") else "immutable"


def sqlite_connect(path: str):
    """A sqlite3 connection to the store at `path` (autocommit: BEGIN is ours), read-only when this user may
    not write it (see read_only_mode)."""
    import sqlite3
    from urllib.parse import quote

    mode = read_only_mode(path)
    if mode is None:
        return sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    query = "mode=ro" if mode == "ro" else "immutable=1"
    return sqlite3.connect(f"file:{quote(os.path.abspath(path))}?{query}", uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None, check_same_thread=False)


def plain_sqlite_path(url: str) -> str | None:
    """The file of a plain `sqlite:///PATH` URL (no driver options, no query string), else None: what the
    standard library's sqlite3 can open as it is."""
    for prefix in SQLITE_FILE_PREFIXES:
        if url.startswith(prefix) and "?" not in url:
            path = url[len(prefix):]
            return path if path and path != ":memory:" else None
    return None


