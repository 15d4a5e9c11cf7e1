"""Engine and sessions. SQLite runs in WAL mode with a busy timeout, and writers take the lock up front
(BEGIN IMMEDIATE) so two processes never lose an update or fail with "database is locked".

Read-only commands (`monitor history`, `monitor status`) go through a `Reader` instead: plain SQL on the
standard library's sqlite3 for a SQLite store, so that they answer without importing SQLAlchemy (whose
import alone takes longer than such a command now does); other databases get the same SQL through
SQLAlchemy Core."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

# The newest migration in migrations/versions; checked against Alembic's own view by the tests.
HEAD_REVISION = "0001"
BUSY_TIMEOUT_MS = 30_000


class StoreError(Exception):
    """The store cannot be opened, migrated or written (one-line message)."""


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """An engine for `url`. `readonly` engines start deferred transactions: readers never block the daemon."""
    from sqlalchemy import create_engine, event

    if url.startswith("sqlite"):
        eng = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(eng, "connect")
        def _connect(dbapi_conn, _rec):
            dbapi_conn.isolation_level = None  # SQLAlchemy, not pysqlite, emits BEGIN
            for pragma in ("journal_mode=WAL", f"busy_timeout={BUSY_TIMEOUT_MS}",
                           "foreign_keys=ON", "synchronous=NORMAL"):
                dbapi_conn.execute(f"PRAGMA {pragma}")

        @event.listens_for(eng, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return eng
    return create_engine(url, pool_pre_ping=True)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One explicit transaction: committed on success, rolled back on any error."""
    # a Session, not sessionmaker(...).begin(): sessionmaker() builds a new Session subclass on every call
    from sqlalchemy.orm import Session

    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def current_revision(engine: Engine) -> str | None:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):
        return None


def upgrade(url: str, engine: Engine | None = None, *, in_child: bool = False) -> bool:
    """Bring the schema to the shipped head. Cheap when already there (no Alembic import).
    Returns True when a migration ran. `in_child`: migrate in a forked child process, so that a process that
    runs for weeks (`monitor run`) never holds Alembic and the migration scripts (about 12 MB)."""
    if engine is not None and current_revision(engine) == HEAD_REVISION:
        return False
    if in_child:
        return _upgrade_in_child(url)
    from alembic import command
    from alembic.config import Config

    cfg = Config()  # no ini file: env.py leaves logging alone
    cfg.set_main_option("script_location", migrations_dir())
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    with _migration_lock(url):  # two processes starting on a new store must not both create it
        if engine is not None and current_revision(engine) == HEAD_REVISION:
            return False
        from sqlalchemy.exc import OperationalError

        try:
            command.upgrade(cfg, "head")
        except OperationalError as exc:
            raise StoreError(f"cannot migrate the store {safe_url(url)}: {safe_error(exc)}") from None
    return True


def _upgrade_in_child(url: str) -> bool:
    """upgrade(url) in a forked child; its StoreError, or any other failure as one line, is raised here."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: migrate, report, and leave without running the parent's cleanup
        code, message = 0, b"1"
        try:
            os.close(read_end)
            message = b"1" if upgrade(url) else b"0"
        except BaseException as exc:  # noqa: BLE001 - everything must reach the parent as one line
            code = 1
            message = (str(exc) if isinstance(exc, StoreError) else
                       describe_error(exc) or f"cannot migrate the store {safe_url(url)}: {type(exc).__name__}: "
                       f"{exc}").encode()
        finally:
            os.write(write_end, message)
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise StoreError(message.splitlines()[0] if message else f"cannot migrate the store {safe_url(url)}")
    return message == "1"


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """An exclusive lock file beside a SQLite store for the time of a migration (other databases run
    Alembic's DDL in a transaction)."""
    from sqlalchemy.engine import make_url

    try:
        path = make_url(url).database if url.startswith("sqlite") else None
    except Exception:
        path = None
    if not path or path == ":memory:":
        yield
        return
    import fcntl

    try:
        fd = os.open(path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open the store {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def migrations_dir() -> str:
    """Where the shipped migrations are: inside the installed package, or migrations/ of a source checkout."""
    try:
        import monitor.migrations as shipped

        return os.path.dirname(shipped.__file__)
    except ImportError:
        return str(Path(__file__).resolve().parent.parent / "migrations")


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


def sqlite_path(url: str) -> str | None:
    """The file of a plain `sqlite:///PATH` URL (no driver options, no query string), else None."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix) and "?" not in url:
            path = url[len(prefix):]
            return path if path and path != ":memory:" else None
    return None


class Reader:
    """Read-only SQL on a store: `rows(sql, params)` with `:name` parameters, in one deferred transaction
    per `with` block (readers never block the daemon). Times go in and come out as aware UTC datetimes,
    as the ORM's UTC column type has them. Over sqlite3 for a SQLite file, else over an SQLAlchemy engine
    (for the service, and for PostgreSQL)."""

    def __init__(self, *, path: str | None = None, engine: Engine | None = None):
        self._path, self._engine, self._conn, self._sa = path, engine, None, None
        self._own_engine = False      # close() disposes only an engine open() made

    @classmethod
    def open(cls, url: str) -> Reader:
        path = sqlite_path(url)
        if path:
            return cls(path=path)
        reader = cls(engine=make_engine(url, readonly=True))
        reader._own_engine = True
        return reader

    def revision(self) -> str | None:
        """The store's schema revision (one query), None when it has none yet or cannot be read."""
        try:
            with self:
                rows = self.rows("SELECT version_num FROM alembic_version")
        except Exception as exc:
            if describe_error(exc) is None:
                raise
            return None
        return rows[0][0] if rows else None

    def __enter__(self) -> Reader:
        if self._path is not None:
            if self._conn is None:
                import sqlite3

                self._conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._conn.execute("BEGIN")
        else:
            self._sa = self._engine.connect()
            self._sa.begin()
        return self

    def __exit__(self, *exc) -> None:
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
        if not isinstance(v, datetime):
            return v
        v = v.astimezone(timezone.utc).replace(tzinfo=None)
        # as SQLAlchemy's SQLite DateTime stores it, so that comparisons on the text agree
        return v.strftime("%Y-%m-%d %H:%M:%S.%f") if self._path is not None else v

    @staticmethod
    def time(v) -> datetime | None:
        """A stored time as an aware UTC datetime."""
        if v is None:
            return None
        if isinstance(v, str):
            v = datetime.fromisoformat(v)
        return v.replace(tzinfo=timezone.utc)

    @classmethod
    def iso(cls, v) -> str | None:
        """A stored time as records.iso_z() writes it. SQLite's text in SQLAlchemy's storage format
        (`YYYY-MM-DD HH:MM:SS.ffffff`) is rewritten as text (20,000 incidents: 40,000 datetimes less);
        anything else goes through a datetime."""
        if isinstance(v, str) and len(v) == 26 and v[10] == " " and v[19] == ".":
            return f"{v[:10]}T{v[11:19] if v.endswith('000000') else v[11:]}Z"
        from monitor.records import iso_z

        return iso_z(cls.time(v))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        elif self._own_engine:
            self._engine.dispose()


def in_list(name: str, values: Sequence) -> tuple[str, dict]:
    """`(:name0, :name1, ...)` and its parameters, for an IN over a list of values."""
    params = {f"{name}{i}": v for i, v in enumerate(values)}
    return "(" + ", ".join(":" + k for k in params) + ")" if params else "(NULL)", params
