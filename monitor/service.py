"""`monitor run`: the long-running service. APScheduler (asyncio) polls each page on its interval with a
little jitter, one poll of a page at a time, missed runs coalesced after a suspend; messages are delivered as
soon as a poll commits them; SIGTERM/SIGINT abandon the poll in flight (its transaction never commits
half-way) and exit 0 within seconds; systemd's notify protocol is spoken when NOTIFY_SOCKET is set."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from datetime import datetime, timedelta, timezone

from monitor.config import Settings

log = logging.getLogger("monitor.service")

DELIVERY_EVERY = 15.0   # seconds between retry sweeps of the outbox


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
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc.strerror)
        return False
    return True


class Service:
    def __init__(self, settings: Settings, engine, rules):
        self.settings, self.engine, self.rules = settings, engine, rules
        self.running_tasks: set[asyncio.Task] = set()
        self.last_attempt: dict[str, float] = {}
        self.outcomes: dict[str, str] = {}
        self.started = time.monotonic()
        self.deliver_lock = asyncio.Lock()
        self.http = None
        self.stopping = asyncio.Event()

    async def poll_job(self, name: str) -> None:
        from monitor.poll import poll_page

        task = asyncio.current_task()
        self.running_tasks.add(task)
        try:
            ps = self.settings.page(name)
            result = await poll_page(self.settings, ps, self.engine, self.http, self.rules)
            self.outcomes[name] = result.summary()
            (log.info if result.ok or result.skipped else log.warning)("poll %s", result.summary())
            sd_notify("STATUS=" + " | ".join(self.outcomes[p.name] for p in self.settings.pages
                                              if p.name in self.outcomes))
            if result.queued:
                await self.deliver()
        except asyncio.CancelledError:
            log.info("poll of %s abandoned: shutting down", name)
            raise
        except Exception as exc:  # a bug must not kill the service; it shows in the log and in `status`
            log.error("poll of %s failed: %s: %s", name, type(exc).__name__, exc)
        finally:
            self.last_attempt[name] = time.monotonic()
            self.running_tasks.discard(task)

    async def deliver(self) -> None:
        from monitor.notify.deliver import deliver_due

        async with self.deliver_lock:
            try:
                await asyncio.to_thread(deliver_due, self.settings, self.engine)
            except Exception as exc:
                log.error("delivery failed: %s: %s", type(exc).__name__, exc)

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
        if self.healthy():
            sd_notify("WATCHDOG=1")
        else:
            log.warning("not pinging the watchdog: a poll loop has not completed recently")

    async def run(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        from monitor.sources.http import client

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        sched = AsyncIOScheduler(timezone=timezone.utc,
                                 job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})
        now = datetime.now(timezone.utc)
        async with client() as http:
            self.http = http
            for i, p in enumerate(self.settings.pages):
                sched.add_job(self.poll_job, "interval", args=[p.name], id=f"poll:{p.name}",
                              seconds=p.poll_interval, jitter=min(5.0, p.poll_interval * 0.1),
                              next_run_time=now + timedelta(seconds=0.2 * i))
            sched.add_job(self.deliver, "interval", id="deliver", seconds=DELIVERY_EVERY,
                          next_run_time=now + timedelta(seconds=1))
            wd = os.environ.get("WATCHDOG_USEC")
            if wd and wd.isdigit() and int(wd) > 0 and os.environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid()):
                sched.add_job(self.watchdog, "interval", id="watchdog", seconds=max(0.5, int(wd) / 2e6))
            sched.start()
            sd_notify("READY=1", "STATUS=started; first poll under way")
            log.info("running: %s; %s", ", ".join(f"{p.name} every {p.poll_interval:g} s" for p in self.settings.pages),
                     "messages to " + (", ".join(n.name for n in self.settings.notifiers) or "the log"))
            await self.stopping.wait()
            sd_notify("STOPPING=1")
            sched.shutdown(wait=False)
            for t in list(self.running_tasks):
                t.cancel()
            if self.running_tasks:
                await asyncio.wait(list(self.running_tasks), timeout=5)
            await asyncio.sleep(0)
        log.info("stopped")

    def stop(self, sig) -> None:
        log.info("received %s, stopping", signal.Signals(sig).name)
        self.stopping.set()


def run(settings: Settings, engine, rules) -> None:
    asyncio.run(Service(settings, engine, rules).run())
