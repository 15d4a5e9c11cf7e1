"""SIGKILL at random points of a poll and of notification delivery, many times, restarting each time.

The real `monitor poll` process (the console script next to sys.executable) polls a replay server that is
slowed down a little, stepping through the real 2024-05-07 upload incident, and delivers to a json://
webhook on 127.0.0.1 that records each message when it arrives and answers only after a short delay, so
kills land mid-poll, mid-transaction, between a send and its "sent" mark, and everywhere in between.

On SQLite and on PostgreSQL. Each `monitor poll` leads while no service does, so a message claimed by a
killed poll is sent by the next one at once: after every poll that runs to its end, nothing is left pending
(no wait for a lease). Afterwards: the store passes its integrity checks, every update of every step is
stored, every message was delivered at least once, with at most one repeat per kill (a kill between a send
and its "sent" mark), and no message was sent again once it had been marked sent."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import faults_report
from helpers import db_rows, store_rows, write_config
from replay import Fault, ReplayServer, StatuspagePage

MONITOR = str(Path(sys.executable).with_name("monitor"))
UPLOADS_2024 = "vn8j63zg56hz"
KILLS_PER_STEP = 4
HOOK_DELAY = 0.25               # seconds the webhook takes to answer (a kill inside it: sent, not marked)
PAGE_DELAY = 0.1                # seconds the status page takes for each request


class SlowHook:
    """A json:// endpoint: records each POST as it arrives, answers 200 after HOOK_DELAY."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook.lock:
                    hook.bodies.append(json.loads(body))
                time.sleep(HOOK_DELAY)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/hook"

    def received(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(b.get("title"), b.get("message")) for b in self.bodies]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def wait_for(cond, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.005)


def rendered(payload: str) -> tuple[str, str]:
    from monitor.notify.render import render

    m = render(json.loads(payload), "text")
    return m.title, m.body


def test_sigkill_anywhere_loses_nothing_and_repeats_at_most_once(tmp_path, openai_history, store_url):
    seed = int(os.environ.get("CRASH_SEED") or time.time_ns() % 100_000)
    rng = random.Random(seed)
    inc = next(i for i in openai_history if i.id == UPLOADS_2024)
    steps = [u.at + timedelta(seconds=30) for u in inc.updates]
    hook = SlowHook()
    kills, how = 0, {"any": 0, "poll": 0, "delivery": 0}
    marked: dict[int, int] = {}                     # outbox id -> messages received when first seen as sent
    late: list[tuple] = []                          # rows still pending after a poll that ran to its end

    def rows(sql: str) -> list[tuple]:
        return store_rows(store_url, sql)

    with ReplayServer(StatuspagePage(openai_history, api_limit=10, feed_limit=10), now=steps[0]) as srv:
        srv.faults["/*"] = Fault.slow(PAGE_DELAY)
        cfg = write_config(tmp_path, {"openai": srv.base_url}, url=store_url,
                           extra=f'[[notifiers]]\nname = "hook"\nurl = "{hook.url}"\n')
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        def start():
            return subprocess.Popen([MONITOR, "--config", str(cfg), "poll"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)

        def note_sent():
            """Remember, for each row now marked sent, how many times its message had arrived."""
            got = hook.received()
            for oid, payload, state in rows("select id, payload, state from outbox"):
                if state == "sent" and oid not in marked:
                    marked[oid] = got.count(rendered(payload))

        def ran_to_the_end():
            """Every message queued so far is out: nothing waits for the lease of a killed process."""
            late.extend(rows("select id, state, next_attempt_at from outbox where state <> 'sent'"))

        def clean_run():
            p = start()
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0 and "Traceback" not in err, (seed, out, err)
            note_sent()
            ran_to_the_end()

        assert subprocess.run([MONITOR, "--config", str(cfg), "db", "upgrade"], env=env,
                              capture_output=True).returncode == 0
        for step in steps:
            srv.now = step
            finished = False
            for _ in range(KILLS_PER_STEP):
                n_req, n_hook = len(srv.requests), len(hook.received())
                p = start()
                mode = rng.choice(("any", "poll", "delivery"))
                if mode == "any":           # once it talks to the page: anywhere from there to its exit (a
                    # poll lasts about 0.5 s from its first request: its requests, its write, one delivery)
                    wait_for(lambda: len(srv.requests) > n_req or p.poll() is not None, 10)
                    time.sleep(rng.uniform(0, 0.6))
                elif mode == "poll":        # fetching, parsing, writing
                    wait_for(lambda: len(srv.requests) > n_req or p.poll() is not None, 10)
                    time.sleep(rng.uniform(0, 3 * PAGE_DELAY))
                else:                       # once a message arrived: before or after its "sent" mark
                    wait_for(lambda: len(hook.received()) > n_hook or p.poll() is not None, 10)
                    time.sleep(rng.uniform(0, HOOK_DELAY + 0.1))
                finished = p.poll() is not None
                if not finished:
                    p.send_signal(signal.SIGKILL)
                    kills += 1
                    how[mode] += 1
                out, err = p.communicate(timeout=30)
                assert "Traceback" not in err, (seed, err)
                note_sent()
                if finished:
                    assert p.returncode == 0, (seed, err)
                    ran_to_the_end()
            if not finished:
                clean_run()                 # each step is polled to the end once
    hook.close()

    if store_url.startswith("sqlite"):
        db = store_url.removeprefix("sqlite:///")
        con = sqlite3.connect(db)
        try:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        finally:
            con.close()
    assert late == [], (seed, late)                                             # never a wait for a lease
    stored = rows("select u.status, u.body from updates u join incidents i on i.id = u.incident_id "
                  f"where i.page_incident_id = '{UPLOADS_2024}' order by u.published_at")
    assert stored == [(u.status, u.body) for u in inc.updates], seed          # no update lost
    hook_rows = rows("select id, event, state, payload from outbox where notifier = 'hook' order by id")
    assert [e for _, e, _, _ in hook_rows] == ["opened", "updated", "updated", "updated", "resolved"], seed
    got = hook.received()
    counts = {oid: got.count(rendered(payload)) for oid, _, _, payload in hook_rows}
    assert all(state == "sent" for _, _, state, _ in hook_rows), (seed, hook_rows)
    assert all(c >= 1 for c in counts.values()), (seed, counts)                 # at least once
    assert sum(c - 1 for c in counts.values()) <= kills, (seed, counts, kills)  # at most one repeat per kill
    assert len(got) == sum(counts.values()), seed                               # nothing else was sent
    assert all(counts[oid] == marked[oid] for oid in counts), (seed, counts, marked)   # none re-sent once marked
    assert kills >= len(steps) * KILLS_PER_STEP // 2, (seed, kills, how)
    if store_url.startswith("sqlite"):
        faults_report.record("store", "10", [
            "`sigkill`",
            f"SIGKILL of `monitor poll` at random points of the poll and of delivery, {len(steps) * KILLS_PER_STEP} "
            f"times over the {len(inc.updates)} updates of a real upload incident, restarting each time "
            "(SQLite and PostgreSQL)",
            "`PRAGMA integrity_check` ok; every update stored; each of the 5 messages delivered, once more only "
            "when a kill fell between its send and its \"sent\" mark; the next poll sends what a killed one "
            "had claimed at once (it leads: no wait for the lease); none sent again once marked sent"])


def _migrating(db: Path) -> bool:
    """True while another process migrates the store (it holds the lock file beside it) and holds the
    store's write lock: the migration's one transaction is open (BEGIN IMMEDIATE), so a kill now lands
    inside it, before its commit."""
    import fcntl

    try:
        fd = os.open(f"{db}.lock", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False            # nobody is migrating
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        con = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=0, isolation_level=None)
    except sqlite3.Error:
        return False            # no store file yet
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        con.close()


def test_sigkill_during_the_first_migration_can_be_restarted(tmp_path):
    """SIGKILL while the first migration's transaction is open (not after it committed): the store is left
    as it was (no table), and the next start migrates it to the head."""
    from monitor.migrate import HEAD_REVISION

    cfg = write_config(tmp_path, {"openai": "http://127.0.0.1:9"})
    db = tmp_path / "m.db"
    for _attempt in range(10):   # the transaction is short: try again until a kill lands inside it
        for f in tmp_path.glob("m.db*"):
            f.unlink()
        p = subprocess.Popen([MONITOR, "--config", str(cfg), "db", "upgrade"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        wait_for(lambda: p.poll() is not None or _migrating(db), 60)
        time.sleep(random.uniform(0, 0.01))      # it holds the lock for 40-150 ms here
        if p.poll() is None and _migrating(db):
            p.send_signal(signal.SIGKILL)
            p.communicate(timeout=30)
            break
        p.communicate(timeout=30)
    else:
        pytest.fail("no kill landed inside the migration in 10 attempts")
    assert p.returncode == -signal.SIGKILL
    assert db_rows(db, "select name from sqlite_master where type = 'table'") == []   # nothing half-made
    again = subprocess.run([MONITOR, "--config", str(cfg), "db", "upgrade"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.endswith(f"migrated to {HEAD_REVISION}\n"), again.stdout
    assert db_rows(db, "select version_num from alembic_version") == [(HEAD_REVISION,)]
