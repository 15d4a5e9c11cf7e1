"""Engines and transactions. SQLite runs in WAL mode with a busy timeout, and writers take the lock up front
(BEGIN IMMEDIATE) so two processes never lose an update or fail with "database is locked"; a store this
user may only read is opened read-only. Also the one-line wording of database errors and URLs.

Elsewhere: migrations in migrate.py, the leader lock in leader.py, read-only SQL in reader.py."""
from __future__ import annotations

import errno
import os
import sqlite3
import sys
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from urllib.parse import quote
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
            set_pragmas(dbapi_conn, read_only=ro)

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


def set_pragmas(conn, *, read_only: bool) -> None:
    """A SQLite connection's settings: WAL, the busy timeout, foreign keys; a store this user may only read
    gets the busy timeout alone (the others would write)."""
    for pragma in ((f"busy_timeout={BUSY_TIMEOUT_MS}",) if read_only else (
            "journal_mode=WAL", f"busy_timeout={BUSY_TIMEOUT_MS}", "foreign_keys=ON", "synchronous=NORMAL")):
        conn.execute(f"PRAGMA {pragma}")


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite store (None for other databases and for an in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    if plain := plain_sqlite_path(url):    # (without importing SQLAlchemy)
        return plain
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


class Store:
    """The store as a poll uses it. For a plain SQLite file, what a poll that learns nothing new does (its page's
    row, validators, health, the outbox's due rows) runs on the standard library's sqlite3, and SQLAlchemy is
    imported only when `engine` is first needed (a change to write, a message to send); for PostgreSQL, and
    when given an engine (the service), everything goes through SQLAlchemy. `run(sql, params)` runs plain SQL
    with :name parameters in one transaction of its own (BEGIN IMMEDIATE on SQLite: the writer's lock up
    front) and returns the rows; times go in and come out as aware UTC datetimes, as the ORM has them."""

    def __init__(self, url: str, engine: Engine | None = None):
        self.url, self._engine = url, engine
        self.path = plain_sqlite_path(url) if engine is None else None
        self._conn = None
        self._lock = threading.Lock()    # one sqlite3 connection, used by one thread at a time

    @classmethod
    def of(cls, store_or_engine) -> Store:
        """A Store as it is, or one over an engine (the service's, a test's): all through SQLAlchemy."""
        if isinstance(store_or_engine, Store):
            return store_or_engine
        return cls(str(store_or_engine.url), engine=store_or_engine)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    def run(self, sql: str, params: dict | None = None, *, write: bool = True) -> list[tuple]:
        """One statement in a transaction of its own."""
        return self.transaction(lambda execute: execute(sql, params), write=write)

    def transaction(self, work, *, write: bool = True):
        """`work(execute)` in one transaction, `execute(sql, params)` returning the rows: committed when it
        returns (a read: rolled back), rolled back on any error."""
        if self.path is None:
            from sqlalchemy import text

            with (self.engine.begin() if write else self.engine.connect()) as conn:
                def execute(sql, params=None):
                    result = conn.execute(text(sql), {k: naive_utc(v) for k, v in (params or {}).items()})
                    return [tuple(r) for r in result] if result.returns_rows else []
                return work(execute)
        if self._conn is None:   # (the first use, before any thread shares it)
            try:
                conn = sqlite_connect(self.path)
                set_pragmas(conn, read_only=read_only_mode(self.path) is not None)
            except sqlite3.OperationalError as exc:
                raise StoreError(cannot_open(self.path, exc)) from None
            self._conn = conn
        conn = self._conn

        def execute(sql, params=None):
            return conn.execute(sql, {k: sqlite_time(v) for k, v in (params or {}).items()}).fetchall()
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    out = work(execute)
                    conn.execute("COMMIT" if write else "ROLLBACK")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:   # e.g. a read-only file system: no -wal or -shm to open
                if "unable to open" not in str(exc):
                    raise
                raise StoreError(cannot_open(self.path, exc)) from None
            return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def write_failure(url: str, exc: Exception) -> str:
    """One line for a database error met while writing the store: a SQLite store that cannot be opened for
    writing (a read-only file system, a directory we may not write) says so, with the reason."""
    why = safe_error(exc)
    path = sqlite_path(url)
    if path is not None and "unable to open" in why:
        return cannot_open(path, exc)
    return f"cannot write the store: {why}"


def cannot_open(path: str, exc: Exception) -> str:
    """`cannot open the store PATH: why`, in the operating system's words where it can tell."""
    why = safe_error(exc)
    try:
        if os.statvfs(os.path.dirname(os.path.abspath(path)) or ".").f_flag & os.ST_RDONLY:
            why = os.strerror(errno.EROFS)
    except OSError:
        pass
    return f"cannot open the store {path}: {why}"


def naive_utc(v):
    return v.astimezone(timezone.utc).replace(tzinfo=None) if isinstance(v, datetime) else v


def sqlite_time(v):
    """A datetime as SQLAlchemy's SQLite DateTime stores it (UTC, `YYYY-MM-DD HH:MM:SS.ffffff`), so that the ORM
    and this module read and compare the same text."""
    v = naive_utc(v)
    return v.strftime("%Y-%m-%d %H:%M:%S.%f") if hasattr(v, "strftime") else v


def stored_time(v):
    """A time read with plain SQL (text on SQLite, a naive datetime elsewhere) as an aware UTC datetime."""
    if v is None:
        return None
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    return v.replace(tzinfo=timezone.utc)
