"""Engine, sessions, migrations and the leader lock. SQLite runs in WAL mode with a busy timeout, and
writers take the lock up front (BEGIN IMMEDIATE) so two processes never lose an update or fail with
"database is locked". One process at a time leads (polls and delivers): see LeaderLock.

Read-only commands (`monitor history`, `monitor status`) go through a `Reader` instead: plain SQL on the
standard library's sqlite3 for a SQLite store, so that they answer without importing SQLAlchemy (whose
import alone takes longer than such a command now does); other databases get the same SQL through
SQLAlchemy Core."""
from __future__ import annotations

import logging
import os
import sys
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

# The newest migration in migrations/versions; checked against Alembic's own view by the tests.
HEAD_REVISION = "0005"
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
    Any number of processes may call it at once on a new store (a lock file beside a SQLite store; an
    advisory lock in the migration's transaction on PostgreSQL, see migrations/env.py).
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
        self._inode: tuple[int, int] | None = None   # SQLite: (device, inode) of the locked file
        self._reported: str | None = None   # the last lock-file error logged (logged once, not every interval)
        self.leading = False

    def hold(self) -> bool:
        """Keep or take the lock; returns whether this process leads now. Losing it (the database restarted,
        the connection dropped, the lock file removed or replaced) is logged once and answered False."""
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
            return self._take_file(path + ".leader")
        if not self.url.startswith("postgresql"):
            return True         # an in-memory SQLite store belongs to this process alone
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        eng = create_engine(self.url, poolclass=NullPool, connect_args=PG_LEADER_CONNECT)
        conn = eng.connect().execution_options(isolation_level="AUTOCOMMIT")
        if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK_KEY}).scalar():
            self._conn = conn
            return True
        conn.close()
        eng.dispose()
        return False

    def _take_file(self, lock_path: str) -> bool:
        """flock the lock file, opened read-only (flock needs no write access; a file another user created
        will do as long as we may read it), created 0644 when missing."""
        import fcntl

        try:
            try:
                fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    os.fchmod(fd, 0o644)   # whatever the umask: any user of the store may lock it
                except OSError:
                    pass
        except OSError as exc:
            self._report(lock_path, exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:       # held elsewhere: another process leads
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            self._report(lock_path, exc)
            return False
        st = os.fstat(fd)
        self._fd, self._inode, self._reported = fd, (st.st_dev, st.st_ino), None
        return True

    def _report(self, lock_path: str, exc: OSError) -> None:
        """An error other than "held elsewhere": nobody may be leading. Logged as an error with the fix."""
        message = (f"cannot use the leader lock file {lock_path}: {exc.strerror or exc}; this process cannot "
                   f"lead (poll or deliver): let this user read it (chmod 644 {lock_path}), or remove it while "
                   "no monitor runs")
        if message != self._reported:
            log.error("%s", message)
            self._reported = message

    @property
    def held_locally(self) -> bool:
        """Held, and nothing to ask anyone to keep it (a file lock, or a store of this process alone): then
        `hold()` answers at once, without a thread (a file lock costs one stat())."""
        return self.leading and self._conn is None

    def _check(self) -> bool:
        if self._conn is not None:
            from sqlalchemy import text

            self._conn.execute(text("SELECT 1"))   # raises when the connection (and so the lock) is gone
        elif self._fd is not None:   # the path must still name the file we locked, or another process leads too
            lock_path = sqlite_path(self.url) + ".leader"
            try:
                st = os.stat(lock_path)
                same = (st.st_dev, st.st_ino) == self._inode
            except FileNotFoundError:
                same = False
            if not same:
                raise OSError(f"{lock_path} was removed or replaced while this process held it; stepping down "
                              "(a process that locks the new file leads)")
        return True

    def release(self) -> None:
        self.leading = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._inode = None, None
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

        from sqlalchemy import select, update

        from monitor.models import Leader, Outbox

        now = datetime.now(timezone.utc)
        with transaction(engine) as s:
            if service:
                s.merge(Leader(id=1, token=PROCESS_TOKEN, host=socket.gethostname(), pid=os.getpid(), since=now))
            leased = (Outbox.state == "pending", Outbox.leased_by.is_not(None), Outbox.leased_by != PROCESS_TOKEN)
            if s.scalars(select(Outbox.id).where(*leased).limit(1)).first() is None:
                return 0     # nothing to write (a read-only store stays readable for a poll to report it)
            return s.execute(update(Outbox).where(*leased).values(next_attempt_at=now, leased_by=None)).rowcount


def step_down(engine: Engine) -> bool:
    """A leading service that stops cleanly removes its leader row, so that `monitor status` names no
    leader that is gone; only while the row still names this process (a new leader's row is left alone).
    Called before the lock is released. Returns whether a row was removed."""
    from sqlalchemy import delete

    from monitor.models import Leader

    with transaction(engine) as s:
        return s.execute(delete(Leader).where(Leader.id == 1, Leader.token == PROCESS_TOKEN)).rowcount > 0


def current_leader(reader: Reader) -> dict | None:
    """The service that leads, as it last named itself: host, pid, since, and last_poll_at (ISO 8601 UTC):
    the newest poll of any page since it took over (only the leader polls; its polls write nothing more)."""
    with reader:
        rows = reader.rows("SELECT l.host, l.pid, l.since, (SELECT max(p.last_poll_at) FROM pages p "
                           "WHERE p.last_poll_at >= l.since) FROM leader l WHERE l.id = 1")
    if not rows:
        return None
    host, pid, since, last_poll = rows[0]
    return {"host": host, "pid": pid, "since": reader.iso(since), "last_poll_at": reader.iso(last_poll)}


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
                import sqlite3

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
