"""Engine, sessions, migrations and the leader lock. SQLite runs in WAL mode with a busy timeout, and
writers take the lock up front (BEGIN IMMEDIATE) so two processes never lose an update or fail with
"database is locked". One process at a time leads (polls and delivers): see LeaderLock."""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

# The newest migration in migrations/versions; checked against Alembic's own view by the tests.
HEAD_REVISION = "0003"
BUSY_TIMEOUT_MS = 30_000

# PostgreSQL advisory lock keys (one 64-bit space per database): around migrations, and the leader's.
MIGRATION_LOCK_KEY = 0x6F73_6D00_0001
LEADER_LOCK_KEY = 0x6F73_6D00_0002
# A dead peer (host gone, cable pulled) is noticed in about 10 + 3 * 5 = 25 s: libpq's keepalives on every
# connection, and on the leader's also the server's (session settings), so that the server releases the
# leader lock and a standby takes over. (The leader's connection must reach PostgreSQL itself, not a
# transaction-pooling proxy: a session-level lock lives in its session.)
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
PG_LEADER_CONNECT = {**PG_KEEPALIVES,
                     "options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"}
# Who this process is in outbox.leased_by and leader.token.
PROCESS_TOKEN = uuid.uuid4().hex


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
    return create_engine(url, pool_pre_ping=True,
                         connect_args=PG_KEEPALIVES if url.startswith("postgresql") else {})


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
    Any number of processes may call it at once on a new store (a lock file beside a SQLite store; an
    advisory lock in the migration's transaction on PostgreSQL, see migrations/env.py).
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
    """An exclusive lock file beside a SQLite store for the time of a migration (PostgreSQL's is taken
    inside the migration's transaction)."""
    path = sqlite_path(url)
    if path is None:
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


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite store (None for other databases and for an in-memory SQLite)."""
    from sqlalchemy.engine import make_url

    try:
        path = make_url(url).database if url.startswith("sqlite") else None
    except Exception:
        return None
    return None if not path or path == ":memory:" else path


class LeaderLock:
    """Whether this process is the leader: the one that polls and delivers. Call `hold()` every interval.

    On PostgreSQL a session-level advisory lock on a connection of its own, kept for the process's life: the
    server releases it when the process dies, or (TCP keepalives) when its host stops answering. On SQLite an
    exclusive `flock` on a file beside the store, which the kernel releases when the process dies. Either is
    tried without waiting; a process that does not get it stands by and tries again on its next `hold()`."""

    def __init__(self, url: str):
        self.url = url
        self._conn = None      # PostgreSQL: the connection holding the lock
        self._fd: int | None = None   # SQLite: the locked file
        self.leading = False

    def hold(self) -> bool:
        """Keep or take the lock; returns whether this process leads now. Losing it (the database restarted,
        the connection dropped) is logged once and answered False."""
        try:
            self.leading = self._check() if self.leading else self._take()
        except Exception as exc:   # any database or OS error: not leading, try again next time
            if self.leading:
                log.warning("lost the leader lock: %s", safe_error(exc) if hasattr(exc, "orig") else exc)
            self.release()
        return self.leading

    def _take(self) -> bool:
        path = sqlite_path(self.url)
        if path is not None:
            import fcntl

            fd = os.open(path + ".leader", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._fd = fd
            return True
        if not self.url.startswith("postgresql"):
            return True         # an in-memory SQLite store belongs to this process alone
        from sqlalchemy.pool import NullPool

        eng = create_engine(self.url, poolclass=NullPool, connect_args=PG_LEADER_CONNECT)
        conn = eng.connect().execution_options(isolation_level="AUTOCOMMIT")
        if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK_KEY}).scalar():
            self._conn = conn
            return True
        conn.close()
        eng.dispose()
        return False

    def _check(self) -> bool:
        if self._conn is not None:
            self._conn.execute(text("SELECT 1"))   # raises when the connection (and so the lock) is gone
        return True

    def release(self) -> None:
        self.leading = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
                conn.engine.dispose()
            except Exception:
                pass

    def take_over(self, engine: Engine, *, service: bool) -> int:
        """Done once by each new leader: make every outbox row that an earlier process had leased (and died
        with) due now, and, for a service, name itself in the leader row. Returns the number of such rows."""
        import socket
        from datetime import datetime, timezone

        from sqlalchemy import select, update

        from monitor.models import Leader, Outbox

        now = datetime.now(timezone.utc)
        with transaction(engine) as s:
            if service:
                s.merge(Leader(id=1, token=PROCESS_TOKEN, host=socket.gethostname(), pid=os.getpid(), since=now,
                                last_poll_at=None))
            leased = (Outbox.state == "pending", Outbox.leased_by.is_not(None), Outbox.leased_by != PROCESS_TOKEN)
            if s.scalars(select(Outbox.id).where(*leased).limit(1)).first() is None:
                return 0     # nothing to write (a read-only store stays readable for a poll to report it)
            return s.execute(update(Outbox).where(*leased).values(next_attempt_at=now, leased_by=None)).rowcount


def note_poll(engine: Engine) -> None:
    """The leading service polled just now (shown by `monitor status`)."""
    from datetime import datetime, timezone

    from sqlalchemy import update

    from monitor.models import Leader

    with transaction(engine) as s:
        s.execute(update(Leader).where(Leader.token == PROCESS_TOKEN)
                  .values(last_poll_at=datetime.now(timezone.utc)))


def current_leader(session: Session) -> dict | None:
    """The service that leads, as it last named itself: host, pid, since and last_poll_at (ISO 8601 UTC)."""
    from sqlalchemy import select

    from monitor.models import Leader
    from monitor.records import iso_z

    row = session.scalars(select(Leader).where(Leader.id == 1)).one_or_none()
    if row is None:
        return None
    return {"host": row.host, "pid": row.pid, "since": iso_z(row.since),
            "last_poll_at": iso_z(row.last_poll_at)}


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
