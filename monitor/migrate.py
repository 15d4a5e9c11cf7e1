"""Migrations: bring a store's schema to the shipped head with Alembic, once, however many processes start at
once (a lock file beside a SQLite store; an advisory lock on PostgreSQL, see migrations/env.py), and, for a
process that runs for weeks, in a forked child so that it never holds Alembic and the scripts."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from monitor.db import StoreError, describe_error, safe_error, safe_url, sqlite_path

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

# The newest migration in migrations/versions; checked against Alembic's own view by the tests.
HEAD_REVISION = "0005"
# PostgreSQL advisory lock key around migrations (one 64-bit space per database; the leader's is in leader.py).
MIGRATION_LOCK_KEY = 0x6F73_6D00_0001


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


def migrations_dir() -> str:
    """Where the shipped migrations are: inside the installed package, or migrations/ of a source checkout."""
    try:
        import monitor.migrations as shipped

        return os.path.dirname(shipped.__file__)
    except ImportError:
        return str(Path(__file__).resolve().parent.parent / "migrations")
