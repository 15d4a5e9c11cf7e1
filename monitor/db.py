"""Engine and sessions. SQLite runs in WAL mode with a busy timeout, and writers take the lock up front
(BEGIN IMMEDIATE) so two processes never lose an update or fail with "database is locked"."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

# The newest migration in migrations/versions; checked against Alembic's own view by the tests.
HEAD_REVISION = "0004"
BUSY_TIMEOUT_MS = 30_000


class StoreError(Exception):
    """The store cannot be opened, migrated or written (one-line message)."""


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """An engine for `url`. `readonly` engines start deferred transactions: readers never block the daemon."""
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
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):
        return None


def upgrade(url: str, engine: Engine | None = None) -> bool:
    """Bring the schema to the shipped head. Cheap when already there (no Alembic import).
    Returns True when a migration ran."""
    if engine is not None and current_revision(engine) == HEAD_REVISION:
        return False
    from alembic import command
    from alembic.config import Config

    cfg = Config()  # no ini file: env.py leaves logging alone
    cfg.set_main_option("script_location", migrations_dir())
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    with _migration_lock(url):  # two processes starting on a new store must not both create it
        if engine is not None and current_revision(engine) == HEAD_REVISION:
            return False
        try:
            command.upgrade(cfg, "head")
        except OperationalError as exc:
            raise StoreError(f"cannot migrate the store {safe_url(url)}: {safe_error(exc)}") from None
    return True


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


def safe_error(exc: Exception) -> str:
    """The database driver's own one-line message (no SQL, no parameters, no URL)."""
    orig = getattr(exc, "orig", None)
    return str(orig).splitlines()[0] if orig is not None else type(exc).__name__


def safe_url(url: str) -> str:
    """The database URL with any password masked, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database url>"
