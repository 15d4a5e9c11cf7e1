"""A redundant pair: two real `monitor run` processes on one store, one leads (polls and delivers), the other
stands by and takes over when the leader dies.

PostgreSQL: both start at the same moment on an empty database (both migrate: the advisory lock makes the
second wait for the first); at a 1 s interval the pair asks the page no more than 1.5 times what one daemon
asks; the 2026-03-02 file-upload incident's first four updates give exactly four messages while each daemon
is SIGKILLed once between updates and restarted; SIGTERM stops both with exit 0.
SQLite: the second daemon stands by behind the lock file, says so once, and takes over; stopped cleanly, the
leader removes its own leader row (`monitor status` names no leader)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from helpers import store_rows
from notify_servers import HTTPServer
from replay import IncidentIoPage, ReplayServer, incidentio_incidents
from test_service import BEFORE, INCIDENT_FILE_PROCESSING, STEPS, Monitor, assert_clean_log, monitor_command

WINDOW = 10.0         # seconds over which page requests are counted
TAKEOVER = r"INFO monitor\.service: leading\b.*: this process polls and delivers now$"
STANDBY = r"INFO monitor\.service: standing by: "


def pair_config(tmp_path: Path, url: str, base_url: str, hook: str | None = None) -> Path:
    text = (f'[database]\nurl = "{url}"\n\n[[pages]]\nname = "openai"\nbase_url = "{base_url}"\n'
            'proxy_host = "status.openai.com"\npoll_interval = 1\nhistory_days = 0\n')
    if hook:
        text += f'\n[[notifiers]]\nname = "hook"\nurl = "{hook}"\n'
    p = tmp_path / f"config-{abs(hash(url))}.toml"
    p.write_text(text)
    p.chmod(0o600)
    return p


def start(cfg: Path) -> Monitor:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "MONITOR_CONFIG")}
    return Monitor(cfg, env)


def leads(m: Monitor) -> bool:
    """The process's last word on leadership says it leads."""
    said = [ln for _, ln in list(m.err) if "standing by" in ln or "leading" in ln]
    return bool(said) and "standing by" not in said[-1]


def polls(m: Monitor) -> int:
    return sum(1 for _, ln in list(m.err) if "poll openai: " in ln)


def requests_per_second(srv: ReplayServer) -> float:
    n0 = len(srv.requests)
    time.sleep(WINDOW)
    return (len(srv.requests) - n0) / WINDOW


def test_two_daemons_on_one_postgres_database(tmp_path, pg_cluster):
    procs: list[Monitor] = []
    try:
        with ReplayServer(IncidentIoPage(incidentio_incidents()), now=BEFORE) as srv, HTTPServer() as web:
            # one daemon alone, on a database of its own: what it asks of the page per second
            solo = start(pair_config(tmp_path, pg_cluster.new_database(), srv.base_url))
            procs.append(solo)
            solo.wait_log(r"poll openai: ok", timeout=60)
            one = requests_per_second(srv)
            assert solo.stop()[0] == 0, solo.stderr

            # two daemons started at the same moment on an empty database
            url = pg_cluster.new_database()
            cfg = pair_config(tmp_path, url, srv.base_url, hook=web.url())
            a, b = start(cfg), start(cfg)
            procs += [a, b]
            for m in (a, b):
                m.wait_log(r"INFO monitor\.service: running: ", timeout=60)   # both came up
            a.wait_log(r"poll openai: ok|standing by", timeout=30)
            b.wait_log(r"poll openai: ok|standing by", timeout=30)
            leader, standby = (a, b) if leads(a) else (b, a)
            assert leads(leader) and not leads(standby), (a.stderr, b.stderr)
            leader.wait_log(r"poll openai: ok", timeout=30)
            two = requests_per_second(srv)
            assert polls(standby) == 0, standby.stderr                    # the standby never asked the page
            assert two <= 1.5 * one, (one, two)

            # the upload incident's first four updates; each daemon is killed once between them
            failovers: list[float] = []
            for n, step in enumerate(STEPS[:4]):
                srv.now = step
                t_step = time.monotonic()
                while len(store_rows(url, "select id from outbox where state = 'sent'")) < n + 1:
                    assert time.monotonic() - t_step < 30, (n, web.requests, a.stderr, b.stderr)
                    time.sleep(0.05)
                if n in (0, 1):
                    t_kill = time.monotonic()
                    leader.kill()
                    standby.wait_log(TAKEOVER, timeout=15)
                    failovers.append(next(t for t, ln in standby.err if re.search(TAKEOVER, ln)) - t_kill)
                    restarted = start(cfg)
                    procs.append(restarted)
                    restarted.wait_log(STANDBY, timeout=30)
                    leader, standby = standby, restarted
            time.sleep(2.5)                                             # two more polls: nothing new
            got = [r.json()["title"] for r in web.requests]
            status = subprocess.run([*monitor_command(), "--config", str(cfg), "status", "--json"],
                                    capture_output=True, text=True, timeout=60)
            rcs = [leader.stop()[0], standby.stop()[0]]
    finally:
        for m in procs:
            m.kill()
    assert len(got) == 4, got                                           # exactly four messages
    assert got[0].startswith("Wait: ") and all(t == got[0] or t.startswith("Wait: ") for t in got), got
    events = store_rows(url, "select event, state from outbox where dedupe_key like :k order by id",
                        k=f"%{INCIDENT_FILE_PROCESSING}%")
    assert events == [("opened", "sent")] + [("updated", "sent")] * 3, events
    assert rcs == [0, 0], (leader.stderr, standby.stderr)
    assert all(f < 15 for f in failovers) and len(failovers) == 2, failovers
    who = json.loads(status.stdout)["leader"]
    assert who["pid"] == leader.proc.pid and who["last_poll_at"] is not None, who
    for m in (leader, standby):
        assert_clean_log(m.stderr)
        assert sum(1 for _, ln in m.err if re.search(STANDBY, ln)) <= 1, m.stderr   # said once
    print(f"page requests per second: one daemon {one:.2f}, two daemons {two:.2f}; "
          f"failover (SIGKILL to the survivor leading) {', '.join(f'{f:.2f} s' for f in failovers)}")


def test_second_daemon_on_one_sqlite_store_stands_by_then_takes_over(tmp_path):
    procs: list[Monitor] = []
    try:
        with ReplayServer(IncidentIoPage(incidentio_incidents()), now=STEPS[0]) as srv:
            url = f"sqlite:///{tmp_path / 'm.db'}"
            cfg = pair_config(tmp_path, url, srv.base_url)
            a = start(cfg)
            procs.append(a)
            a.wait_log(r"sent opened for openai/.* via log$", timeout=60)
            b = start(cfg)
            procs.append(b)
            b.wait_log(STANDBY, timeout=30)
            time.sleep(3)                                 # three more tries: still standing by, said once
            assert polls(b) == 0 and polls(a) >= 3, (a.stderr, b.stderr)
            t_kill = time.monotonic()
            a.kill()
            t_lead = b.wait_log(TAKEOVER, timeout=15)
            b.wait_log(r"poll openai: ok", timeout=15)
            srv.now = STEPS[1]
            b.wait_log(r"sent updated for openai/.* via log$", timeout=15)
            text = subprocess.run([*monitor_command(), "--config", str(cfg), "status"], capture_output=True,
                                  text=True, timeout=60).stdout
            rc, _ = b.stop()
            # stopped cleanly (SIGTERM): the leader removed its own row, so no leader is named any more
            after = subprocess.run([*monitor_command(), "--config", str(cfg), "status", "--json"],
                                   capture_output=True, text=True, timeout=60)
    finally:
        for m in procs:
            m.kill()
    assert rc == 0, b.stderr
    assert sum(1 for _, ln in b.err if re.search(STANDBY, ln)) == 1, b.stderr
    assert t_lead - t_kill < 2 * 1 + 1, t_lead - t_kill                # within two poll intervals (+1 s)
    assert re.search(rf"^Leader: \S+ pid {b.proc.pid} since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC, last poll "
                     r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", text, re.M), text
    assert store_rows(url, "select event, state from outbox order by id") == [("opened", "sent"), ("updated", "sent")]
    assert_clean_log(b.stderr)
    assert json.loads(after.stdout)["leader"] is None, (after.stdout, after.stderr)
    assert "Leader:" not in subprocess.run([*monitor_command(), "--config", str(cfg), "status"],
                                           capture_output=True, text=True, timeout=60).stdout
    assert store_rows(url, "select count(*) from leader") == [(0,)]
