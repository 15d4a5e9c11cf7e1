"""`monitor run`: the long-running service.

* One leader among any number of `monitor run` on one store (LeaderLock in leader.py: a PostgreSQL advisory lock, a
  lock file beside a SQLite store): only the leader polls and delivers. The others stand by (logged once),
  try again every poll interval, and the first to get the lock after the leader died takes over: it delivers
  at once what the dead leader had claimed, and polls at once. Takeover within two poll intervals.
* APScheduler 3 (asyncio) polls each page on its interval with a little jitter; never two polls of one page
  at once (max_instances=1); runs missed during a suspend are coalesced into one, however late.
* Messages a poll queued are delivered at once, in a task of their own (a slow channel never holds up the
  next poll); a sweep every DELIVERY_EVERY seconds retries what failed.
* SIGTERM/SIGINT: the poll in flight is cancelled (its transaction never commits half-way: everything it
  learnt is written in one BEGIN IMMEDIATE transaction without an await inside), a delivery in flight gets
  DELIVERY_GRACE seconds to record its outcome, and the process exits 0.
* systemd's notify protocol when NOTIFY_SOCKET is set: READY=1 once the store is migrated and the scheduler
  started, STATUS= with the last poll's outcome of each page, WATCHDOG=1 every WATCHDOG_USEC/2 while every
  page's poll loop keeps completing (a hung loop stops the pings and systemd restarts us), STOPPING=1.
* With `[probe]` configured, the probe of the OpenAI Files API (monitor/probe.py) runs every `interval`
  seconds while this process leads (`self.leading`); a probe in flight at SIGTERM is cancelled and its file
  deleted (within CANCEL_GRACE).
* Logs: one line per event on stderr, level first; under journald (JOURNAL_STREAM) each line also carries
  its syslog priority (`<4>WARNING ...`), so `journalctl -p warning` works.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

from monitor.config import Settings

log = logging.getLogger("monitor.service")

DELIVERY_EVERY = 15.0   # seconds between retry sweeps of the outbox
DELIVERY_GRACE = 5.0    # seconds a delivery in flight may still take after SIGTERM
CANCEL_GRACE = 3.0      # seconds a cancelled poll may take to unwind


def sd_notify(*lines: str) -> bool:
    """Send `lines` to systemd (no-op when not started by systemd)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall("\n".join(lines).encode())
    except OSError as exc:
        if not _notify_failed:     # once: the watchdog would repeat it every few seconds
            log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc.strerror or exc)
            _notify_failed.append(exc)
        return False
    return True


_notify_failed: list[OSError] = []


def watchdog_seconds() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when no watchdog is asked of us."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not (usec.isascii() and usec.isdigit()) or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return max(0.1, int(usec) / 2e6)


# ------------------------------------------------------------------------------------------------ logging

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class OneLineFormatter(logging.Formatter):
    """Wraps a formatter: every record becomes exactly one line (newlines in messages and tracebacks are
    shown as ` | `), prefixed with `<priority>` when stderr is the journal."""

    def __init__(self, inner: logging.Formatter | None, journal: bool):
        super().__init__()
        self.inner = inner or logging.Formatter("%(levelname)s %(name)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        text = " | ".join(part.rstrip() for part in text.splitlines() if part.strip())
        if self.journal:
            text = f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        return text


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=dev:inode of the stream it connected stdout/stderr to."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def one_line_logs() -> None:
    journal = stderr_is_journal()
    for h in logging.getLogger().handlers:
        if not isinstance(h.formatter, OneLineFormatter):
            h.setFormatter(OneLineFormatter(h.formatter, journal))


# ------------------------------------------------------------------------------------------------ service

def in_daemon_thread(fn, *args) -> tuple[threading.Thread, asyncio.Future]:
    """Start fn(*args) in a daemon thread; returns the thread and a future of its result. Unlike
    asyncio.to_thread, a call still running at exit does not keep the process alive (the caller decides how
    long to wait for it)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(setter, value):
        if not fut.done():
            setter(value)

    def target():
        try:
            value = fn(*args)
        except BaseException as exc:  # handed to the awaiting task
            done = (fut.set_exception, exc)
        else:
            done = (fut.set_result, value)
        try:
            loop.call_soon_threadsafe(settle, *done)
        except RuntimeError:  # the loop is gone: we are shutting down
            pass

    t = threading.Thread(target=target, name=f"{getattr(fn, '__name__', 'work')}", daemon=True)
    t.start()
    return t, fut


class Service:
    def __init__(self, settings: Settings, engine, rules):
        self.settings, self.engine, self.rules = settings, engine, rules
        self.polls: set[asyncio.Task] = set()
        self.tasks: set[asyncio.Task] = set()
        self.threads: set[threading.Thread] = set()
        self.last_attempt: dict[str, float] = {}
        self.outcomes: dict[str, str] = {}
        self.started = time.monotonic()
        self.http = None
        self.web = None                 # the read-only listener, when [http] is configured
        self.stopping = asyncio.Event()
        self.delivering = False
        self.deliver_again = False
        self.leading = False        # this process is the leader: its poll jobs, deliveries and probes do their work
        self.lock = None            # leader.LeaderLock, made in run()
        self.sched = None
        self.standby_logged = False
        self.took_over = ""
        self.prober = None
        self.polled: set[str] = set()   # pages this process has polled: the first poll ignores an old back-off

    # -- jobs ------------------------------------------------------------------------------------------

    async def poll_job(self, name: str) -> None:
        """One poll of one page (an APScheduler job). Never raises: APScheduler would log a traceback."""
        from monitor.poll import poll_page

        if self.stopping.is_set():
            return
        task = asyncio.current_task()
        self.polls.add(task)
        try:
            if not self.leading:      # standing by: the leader polls
                return
            ps = self.settings.page(name)
            result = await poll_page(self.settings, ps, self.engine, self.http, self.rules,
                                     ignore_backoff=name not in self.polled)
            self.polled.add(name)
            if self.web:
                self.web.counts.observe(result)
            at = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
            self.outcomes[name] = f"{result.summary()} (at {at})"
            (log.info if result.ok or result.skipped else log.warning)("poll %s", result.summary())
            sd_notify("STATUS=" + " | ".join(self.outcomes[p.name] for p in self.settings.pages
                                              if p.name in self.outcomes))
            if result.queued:
                self.spawn(self.deliver())
        except asyncio.CancelledError:
            log.info("poll of %s abandoned: shutting down (nothing of it was stored)", name)
        except Exception as exc:  # a bug must not kill the service; it shows in the log and in `status`
            log.error("poll of %s failed: %s: %s", name, type(exc).__name__, exc)
        finally:
            self.last_attempt[name] = time.monotonic()
            self.polls.discard(task)

    async def probe_job(self) -> None:
        """One probe of the Files API (an APScheduler job), on the leader only. Never raises."""
        if self.stopping.is_set() or not self.leading:
            return
        task = asyncio.current_task()
        self.polls.add(task)
        try:
            if await self.prober.run_once():
                self.spawn(self.deliver())
        except asyncio.CancelledError:
            log.info("probe abandoned: shutting down")
        except Exception as exc:  # a bug must not kill the service
            log.error("probe failed: %s: %s", type(exc).__name__, exc)
        finally:
            self.polls.discard(task)

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def deliver(self) -> None:
        """Send what is due. One delivery at a time; a request made while one runs makes it go round again."""
        if not self.leading:
            return
        if self.delivering:
            self.deliver_again = True
            return
        from monitor.notify.deliver import deliver_due

        self.delivering = True
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            while not self.stopping.is_set():
                self.deliver_again = False
                self.threads = {t for t in self.threads if t.is_alive()}
                thread, fut = in_daemon_thread(deliver_due, self.settings, self.engine)
                self.threads.add(thread)
                try:
                    await fut
                except asyncio.CancelledError:
                    return
                except Exception as exc:
                    log.error("delivery failed: %s: %s", type(exc).__name__, exc)
                if not self.deliver_again:
                    break
        finally:
            self.delivering = False
            self.tasks.discard(task)

    async def lead(self) -> None:
        """Keep or take the leader lock (a job every poll interval). On taking it: take over the outbox rows
        a dead leader had claimed, deliver what is due and poll every page now."""
        if self.stopping.is_set():
            return
        from monitor.leader import current_leader
        from monitor.reader import Reader

        was = self.leading
        if self.lock.held_locally:      # a file lock held: one stat() to check it, no thread to start
            now_leading = self.lock.hold()
        else:
            _, fut = in_daemon_thread(self.lock.hold)
            try:
                now_leading = await fut
            except asyncio.CancelledError:
                return
        if now_leading and not was:
            try:
                _, fut = in_daemon_thread(lambda: self.lock.take_over(self.engine, service=True))
                released = await fut
            except asyncio.CancelledError:
                self.lock.release()
                return
            except Exception as exc:      # the store is unreachable: let go, try again next time
                log.error("cannot take over as leader: %s: %s", type(exc).__name__, exc)
                self.lock.release()
                return
            self.leading = True
            self.took_over = "leading" + (
                f"; {released} message(s) a previous leader had claimed are due now" if released else "")
            self.spawn(self.deliver())
            if self.sched.running:        # a standby taking over (at start, run() logs it and polls anyway)
                log.info("%s: this process polls and delivers now", self.took_over)
                at = datetime.now(timezone.utc)
                for i, p in enumerate(self.settings.pages):
                    self.sched.modify_job(f"poll:{p.name}", next_run_time=at + timedelta(seconds=0.2 * i))
        elif was and not now_leading:
            self.leading = False
            log.warning("no longer the leader: standing by")
        elif not now_leading and not self.standby_logged:
            self.standby_logged = True
            try:
                who = await asyncio.to_thread(current_leader, Reader(engine=self.engine))
            except Exception:
                who = None
            who = f"{who['host']} pid {who['pid']} leads since {who['since']}" if who else "another process leads"
            log.info("standing by: %s; trying to take over every %g s", who, self.lead_interval())
            sd_notify(f"STATUS=standing by: {who}")
        if now_leading:
            self.standby_logged = False

    def lead_interval(self) -> float:
        return min(p.poll_interval for p in self.settings.pages)

    def healthy(self) -> bool:
        """Every page's poll loop has completed an attempt recently (a hung loop stops the watchdog pings;
        a status page that is down is not our fault and does not)."""
        now = time.monotonic()
        for p in self.settings.pages:
            limit = 2 * p.poll_interval + p.deadline + 30
            if now - self.last_attempt.get(p.name, self.started) > limit:
                return False
        return True

    async def watchdog(self) -> None:
        if self.stopping.is_set():
            return
        if self.healthy():
            sd_notify("WATCHDOG=1")
        else:
            log.warning("not pinging the watchdog: a poll loop has not completed recently")

    # -- life ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        from monitor.leader import LeaderLock
        from monitor.sources.http import client

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        sched = self.sched = AsyncIOScheduler(timezone=timezone.utc, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self.lock = LeaderLock(self.settings.database_url())
        try:
            await self.lead()
            await self._serve(sched, client)
        finally:   # a clean stop, or an error while starting (a port in use): name no leader that is gone
            await self._step_down()
        log.info("stopped")

    async def _serve(self, sched, client) -> None:
        now = datetime.now(timezone.utc)
        async with client() as http:
            self.http = http
            sched.add_job(self.lead, "interval", id="lead", name="lead", seconds=self.lead_interval())
            for i, p in enumerate(self.settings.pages):
                sched.add_job(self.poll_job, "interval", args=[p.name], id=f"poll:{p.name}", name=f"poll {p.name}",
                              seconds=p.poll_interval, jitter=min(5.0, p.poll_interval * 0.1),
                              next_run_time=now + timedelta(seconds=0.2 * i))
            if self.settings.probe:
                from monitor.probe import Prober

                self.prober = Prober(self.settings, self.engine)
                sched.add_job(self.probe_job, "interval", id="probe", name="probe",
                              seconds=self.settings.probe.interval, next_run_time=now + timedelta(seconds=0.5))
            sched.add_job(self.deliver, "interval", id="deliver", name="deliver", seconds=DELIVERY_EVERY,
                          next_run_time=now + timedelta(seconds=1))
            wd = watchdog_seconds()
            if wd:
                sched.add_job(self.watchdog, "interval", id="watchdog", name="watchdog", seconds=wd)
            if self.settings.http:      # the page, /metrics, /status.json, /healthz: on a standby too
                from monitor.web.server import WebServer

                self.web = WebServer(self.settings)
                await self.web.start()
            sched.start()
            sd_notify("READY=1", "STATUS=started; " + ("first poll under way" if self.leading else "standing by"))
            log.info("running: %s; messages to %s%s%s; %s",
                     ", ".join(f"{p.name} every {p.poll_interval:g} s" for p in self.settings.pages),
                     ", ".join(n.name for n in self.settings.notifiers) or "the log",
                     f"; probe of the Files API every {self.settings.probe.interval:g} s" if self.prober else "",
                     f"; watchdog ping every {wd:g} s" if wd else "",
                     self.took_over if self.leading else "standing by")
            await self.stopping.wait()
            sd_notify("STOPPING=1", "STATUS=stopping")
            sched.pause()
            await self._wind_down()
            sched.shutdown(wait=False)
            if self.web:
                await self.web.stop()
            if self.prober:
                await self.prober.close()

    async def _step_down(self) -> None:
        """Remove this process from the leader row (while it leads), then let go of the lock."""
        if self.leading:
            from monitor.db import safe_error
            from monitor.leader import step_down

            try:
                await asyncio.to_thread(step_down, self.engine)
            except Exception as exc:   # the store is unreachable: the row stays, the next leader replaces it
                log.warning("cannot remove this process from the leader row: %s",
                            safe_error(exc) if hasattr(exc, "orig") else f"{type(exc).__name__}: {exc}")
        self.lock.release()

    async def _wind_down(self) -> None:
        """Cancel what runs; our jobs end normally when cancelled (APScheduler would log a traceback for a
        job that ends cancelled, which is what its own shutdown() does to every job it is running)."""
        for _ in range(3):      # jobs submitted but not started yet start now, and return at once
            await asyncio.sleep(0)
        for t in list(self.polls) + list(self.tasks):
            t.cancel()
        pending = list(self.polls) + list(self.tasks)
        if pending:
            await asyncio.wait(pending, timeout=CANCEL_GRACE)
        deadline = time.monotonic() + DELIVERY_GRACE
        while any(t.is_alive() for t in self.threads) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if any(t.is_alive() for t in self.threads):
            log.warning("a delivery was still in flight at exit; its message may be sent again after restart")

    def stop(self, sig) -> None:
        if self.stopping.is_set():
            return
        log.info("received %s, stopping", signal.Signals(sig).name)
        self.stopping.set()


def run(settings: Settings, engine, rules) -> None:
    one_line_logs()
    try:
        asyncio.run(Service(settings, engine, rules).run())
    finally:
        engine.dispose()
