"""The leader: the one process that polls and delivers. A lock that the operating system or the database
releases when the process dies (LeaderLock), the leader row `monitor status` names, and what a new leader
takes over from a dead one."""
from __future__ import annotations

import logging
import os
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from monitor.db import PG_KEEPALIVES, Store, safe_error, sqlite_path

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from monitor.reader import Reader

log = logging.getLogger(__name__)

LEADER_LOCK_KEY = 0x6F73_6D00_0002     # PostgreSQL advisory lock key of the leader
# A dead peer (host gone, cable pulled) is noticed in about 10 + 3 * 5 = 25 s: libpq's keepalives on every
# connection, and on the leader's also the server's (session settings), so that the server releases the
# leader lock and a standby takes over. (The leader's connection must reach PostgreSQL itself, not a
# transaction-pooling proxy: a session-level lock lives in its session.)
PG_LEADER_CONNECT = {**PG_KEEPALIVES,
                     "options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"}
# Who this process is in outbox.leased_by and leader.token.
PROCESS_TOKEN = uuid.uuid4().hex


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

    def take_over(self, store, *, service: bool) -> int:
        """Done once by each new leader: make every outbox row that an earlier process had leased (and died
        with) due now, and, for a service, name itself in the leader row. Returns the number of such rows."""
        import socket

        store = Store.of(store)
        now = datetime.now(timezone.utc)
        leased = ("FROM outbox WHERE state = 'pending' AND leased_by IS NOT NULL AND leased_by <> :me")

        def work(execute) -> int:
            if service:
                execute("DELETE FROM leader WHERE id = 1")
                execute("INSERT INTO leader (id, token, host, pid, since) VALUES (1, :me, :host, :pid, :now)",
                        {"me": PROCESS_TOKEN, "host": socket.gethostname(), "pid": os.getpid(), "now": now})
            elif not execute(f"SELECT id {leased} LIMIT 1", {"me": PROCESS_TOKEN}):
                return 0     # nothing to write (a read-only store stays readable for a poll to report it)
            return len(execute(f"UPDATE outbox SET next_attempt_at = :now, leased_by = NULL WHERE id IN "
                               f"(SELECT id {leased}) RETURNING id", {"me": PROCESS_TOKEN, "now": now}))

        if not service and not store.run(f"SELECT id {leased} LIMIT 1", {"me": PROCESS_TOKEN}, write=False):
            return 0         # the usual case, read without taking the write lock
        return store.transaction(work)


def step_down(engine: Engine) -> bool:
    """A leading service that stops cleanly removes its leader row, so that `monitor status` names no
    leader that is gone; only while the row still names this process (a new leader's row is left alone).
    Called before the lock is released. Returns whether a row was removed."""
    from sqlalchemy import delete

    from monitor.tables import leader

    with engine.begin() as conn:
        return conn.execute(delete(leader).where(leader.c.id == 1, leader.c.token == PROCESS_TOKEN)).rowcount > 0


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
