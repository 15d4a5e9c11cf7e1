"""Readers and the writer on one store, and a store that cannot be written.

- `monitor history` and `monitor status` in loops, and a read transaction held open, while `monitor run`
  polls every second: no "database is locked", and the daemon's polls keep completing (SQLite and
  PostgreSQL).
- A full disk (a real tmpfs filled up) under `monitor run`: a clear one-line error per poll, nothing
  half-written, the service keeps retrying and catches up once there is room again.
- A read-only store (an immutable file; a read-only filesystem): a clear one-line error, nothing written,
  the next poll once it is writable again stores what was missed.

The mounts need root with CAP_SYS_ADMIN (the tests skip, with the reason, without it)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import faults_report
from helpers import db_rows, run, store_rows, write_config
from replay import ReplayServer, StatuspagePage

MONITOR = str(Path(sys.executable).with_name("monitor"))
UTC = timezone.utc
UPLOADS_2024 = "vn8j63zg56hz"
CONTENT = ("incidents", "updates", "incident_components", "tags", "components", "outbox", "deliveries")


class Daemon:
    """`monitor run` as a subprocess, its stderr collected line by line."""

    def __init__(self, cfg: Path):
        self.p = subprocess.Popen([MONITOR, "--config", str(cfg), "run"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(list(self.lines)):
                return True
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        return pred(list(self.lines))

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        self.t.join(timeout=5)
        return rc

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def polls(lines: list[str], word: str = "ok") -> int:
    return sum(1 for ln in lines if f"poll openai: {word}" in ln)


def snapshot(db: Path) -> dict:
    return {t: db_rows(db, f"select * from {t} order by id") for t in CONTENT}


# ------------------------------------------------------------------------------------ readers vs writer

def hold_a_snapshot(url: str):
    """A reader in another connection that opens a transaction, reads, and keeps its snapshot."""
    if url.startswith("sqlite"):
        held = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)
        held.execute("BEGIN")
    else:
        import psycopg

        held = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        held.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    held.execute("select count(*) from incidents").fetchall()
    return held


def test_readers_never_see_locked_and_never_block_the_daemon(tmp_path, openai_history, store_url):
    start = datetime(2024, 3, 1, tzinfo=UTC)
    with ReplayServer(StatuspagePage(openai_history, api_limit=20, feed_limit=20), now=start) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, url=store_url, poll_interval=1)
        stop = threading.Event()

        def advance():                     # the page keeps publishing: every poll has something to write
            while not stop.wait(0.25):
                srv.now = srv.now + timedelta(hours=6)

        daemon = Daemon(cfg)
        ticker = threading.Thread(target=advance, daemon=True)
        try:
            assert daemon.wait_for(lambda ls: polls(ls) >= 1, 60), daemon.text
            ticker.start()
            held = hold_a_snapshot(store_url)           # a reader that keeps its snapshot open for 2.5 s
            reads, errors, successes = 0, [], []
            t_end = time.monotonic() + 5
            t_release = time.monotonic() + 2.5
            while time.monotonic() < t_end:
                for args in (("history", "--json", "--all"), ("status", "--json")):
                    r = run(cfg, *args, ok=None)
                    reads += 1
                    if "locked" in r.output or "Traceback" in r.output or r.exit_code not in (0, 1, 2, 3):
                        errors.append(r.output)
                    json.loads(r.stdout)
                last = store_rows(store_url, "select last_success_at from pages where name = 'openai'")[0][0]
                if not successes or successes[-1][1] != last:
                    successes.append((time.monotonic(), last))
                if held is not None and time.monotonic() > t_release:
                    held.rollback()
                    held.close()
                    held = None
            during_hold = [t for t, _ in successes if t <= t_release]
        finally:
            stop.set()
            rc = daemon.stop()
    assert errors == [], errors[:3]
    assert rc == 0, daemon.text
    assert "database is locked" not in daemon.text and "Traceback" not in daemon.text, daemon.text
    assert len(during_hold) >= 2, successes        # the daemon committed while a reader held its snapshot
    gaps = [b - a for (a, _), (b, _) in zip(successes, successes[1:])]
    assert len(successes) >= 3 and max(gaps) < 5, (successes, gaps)
    assert polls(daemon.lines, "failed") == 0, daemon.text
    if not store_url.startswith("sqlite"):
        return
    faults_report.record("store", "20", [
        "`readers-vs-run`",
        "`monitor history` and `monitor status` in a loop from another process, and a read transaction held "
        "open for 2.5 s, while `monitor run` polls every second (each poll writing)",
        "no \"database is locked\" anywhere; the daemon's polls kept committing, also while the reader held "
        "its snapshot (SQLite WAL, BEGIN IMMEDIATE writers, busy timeout)"])


# ------------------------------------------------------------------------------ full or read-only disk

def mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def umount(path: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)


def poll_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([MONITOR, "--config", str(cfg), *(args or ("poll",))], capture_output=True, text=True,
                       timeout=120)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def error_line(p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), p.stderr    # one line, nothing else
    return lines[0]


@pytest.fixture
def upload_page(openai_history):
    inc = next(i for i in openai_history if i.id == UPLOADS_2024)
    t1, t2 = (u.at + timedelta(minutes=1) for u in inc.updates[1:3])
    with ReplayServer(StatuspagePage(openai_history, api_limit=10, feed_limit=10), now=t1) as srv:
        yield srv, t2


def caught_up(db: Path, before: dict) -> None:
    """The update published while the store could not be written is stored now, with its one message."""
    statuses = db_rows(db, "select u.status from updates u join incidents i on i.id = u.incident_id "
                           "where i.page_incident_id = ? order by u.published_at", UPLOADS_2024)
    assert [s for s, in statuses] == ["investigating", "identified", "monitoring"]
    new = [r for r in snapshot(db)["outbox"] if r not in before["outbox"]]
    assert [(r[3], UPLOADS_2024 in r[4]) for r in new] == [("updated", True)], new


def test_disk_full_under_the_service(tmp_path, upload_page):
    srv, t2 = upload_page
    store = tmp_path / "store"
    store.mkdir()
    m = mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(store))
    if m.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {m.stderr.strip()}")
    try:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, db="store/m.db", poll_interval=1)
        assert poll_cli(cfg).returncode == 0
        db = store / "m.db"
        before = snapshot(db)
        with open(store / "filler", "wb", buffering=0) as f:   # fill the disk, then leave 40 KB
            try:
                while True:
                    f.write(bytes(1 << 16))
            except OSError:
                pass
        os.truncate(store / "filler", max(0, os.path.getsize(store / "filler") - 40960))
        srv.now = t2
        daemon = Daemon(cfg)
        try:
            assert daemon.wait_for(lambda ls: polls(ls, "failed") >= 2, 60), daemon.text
            failures = [ln for ln in daemon.lines if "poll openai: failed" in ln]
            assert snapshot(db) == before                       # nothing half-written
            os.remove(store / "filler")
            assert daemon.wait_for(lambda ls: polls(ls) >= 1, 30), daemon.text   # it kept retrying
        finally:
            rc = daemon.stop()
        assert rc == 0 and "Traceback" not in daemon.text, daemon.text
        caught_up(db, before)
        failure = failures[0].split("poll ", 1)[1]
        assert failure == "openai: failed: cannot write the store: database or disk is full", failures
        assert all(ln.endswith(failure) for ln in failures)
        assert db_rows(db, "PRAGMA integrity_check") == [("ok",)]
    finally:
        umount(store)
    faults_report.record("store", "30", [
        "`disk-full`", "the store's filesystem (a 2 MB tmpfs) is full while `monitor run` polls a page with news",
        f"each poll logs one line `WARNING monitor.service: poll {failure}`; nothing half-written; the service "
        "keeps polling and, once there is room, stores the missed update and queues its one message"])


def test_read_only_store_file(tmp_path, upload_page):
    srv, t2 = upload_page
    cfg = write_config(tmp_path, {"openai": srv.base_url})
    assert poll_cli(cfg).returncode == 0
    db = tmp_path / "m.db"
    before = snapshot(db)
    c = subprocess.run(["chattr", "+i", str(db)], capture_output=True, text=True)
    if c.returncode != 0:
        pytest.skip(f"cannot make the store file immutable: {c.stderr.strip()}")
    try:
        srv.now = t2
        p = poll_cli(cfg)
        line = error_line(p)
        assert p.returncode == 1
        assert json.loads(poll_cli(cfg, "history", "--json").stdout)     # reading still works
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert snapshot(db) == before
    assert poll_cli(cfg).returncode == 0
    caught_up(db, before)
    faults_report.record("store", "40", [
        "`read-only-file`", "the store file is immutable (`chattr +i`; root ignores permission bits)",
        f"`monitor poll` exits 1 with one line `{line}`; nothing written; reading commands still work; the "
        "next poll once it is writable stores the missed update and queues its one message"])


def test_read_only_filesystem(tmp_path, upload_page):
    srv, t2 = upload_page
    store = tmp_path / "store"
    store.mkdir()
    cfg = write_config(tmp_path, {"openai": srv.base_url}, db="store/m.db")
    assert poll_cli(cfg).returncode == 0
    db = store / "m.db"
    before = snapshot(db)
    m = mount("--bind", str(store), str(store))
    if m.returncode != 0:
        pytest.skip(f"cannot bind-mount the store directory: {m.stderr.strip()}")
    try:
        m = mount("-o", "remount,bind,ro", str(store))
        if m.returncode != 0:
            pytest.skip(f"cannot remount the store directory read-only: {m.stderr.strip()}")
        srv.now = t2
        p = poll_cli(cfg)
        line = error_line(p).replace(str(tmp_path), "<dir>")
        assert p.returncode == 1 and ("read" in line or "open" in line), line
    finally:
        umount(store)
    assert snapshot(db) == before
    assert poll_cli(cfg).returncode == 0
    caught_up(db, before)
    faults_report.record("store", "50", [
        "`read-only-fs`", "the store's directory is on a read-only filesystem (a read-only bind mount)",
        f"`monitor poll` exits 1 with one line `{line}`; nothing written; the next poll once it is writable "
        "stores the missed update and queues its one message"])
