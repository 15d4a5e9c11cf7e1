"""`monitor run` as systemd runs it: the real console script in a subprocess, a real unix datagram socket as
NOTIFY_SOCKET, the replay server stepping through the 2026-03-02 file-processing incident, real signals.
Also the unit file, checked with systemd-analyze when it exists."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from helpers import db_rows
from notify_servers import HTTPServer
from replay import INCIDENT_FILE_PROCESSING, IncidentIoPage, ReplayServer, incidentio_incidents

from monitor.migrate import HEAD_REVISION
from monitor.service import OneLineFormatter, Service

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "openai-status-monitor.service"
INC = next(i for i in incidentio_incidents() if i.id == INCIDENT_FILE_PROCESSING)
STEPS = [u.posted + timedelta(seconds=30) for u in INC.updates]
BEFORE = STEPS[0] - timedelta(hours=1)
DETAIL = f"/proxy/status.openai.com/incidents/{INCIDENT_FILE_PROCESSING}"
LOG_LINE = re.compile(r"^(<\d>)?(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: \S")


def monitor_command() -> list[str]:
    """The installed console script (what systemd's ExecStart runs), else `python -m monitor`."""
    script = Path(sys.executable).parent / "monitor"
    return [str(script)] if script.exists() else [sys.executable, "-m", "monitor"]


class NotifySocket:
    """systemd's end of the notify protocol: a datagram socket that records (time, sender pid, message)."""

    def __init__(self, tmp_path: Path, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"osm-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            path = tmp_path / "notify.sock"
            self.sock.bind(str(path))
            self.env_value = str(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, int, str]] = []
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._recv, daemon=True)
        self.thread.start()

    def _recv(self):
        creds = struct.calcsize("3i")
        while not self.closed:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds))
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            pid = next((struct.unpack("3i", d[:creds])[0] for lvl, typ, d in anc
                        if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS), -1)
            with self.cond:
                self.messages.append((time.monotonic(), pid, data.decode()))
                self.cond.notify_all()

    def lines(self) -> list[str]:
        with self.cond:
            return [line for _, _, m in self.messages for line in m.split("\n")]

    def wait_for(self, pred, timeout: float = 15.0) -> tuple[float, int, str]:
        """The first message (time, pid, text) with a line matching `pred`."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for msg in self.messages:
                    if any(pred(line) for line in msg[2].split("\n")):
                        return msg
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching notify message in {timeout} s; got {self.messages}")
                self.cond.wait(left)

    def close(self):
        self.closed = True
        self.thread.join(2)
        self.sock.close()


class Monitor:
    """`monitor --config CFG run` in a subprocess; stderr lines are kept with their arrival time."""

    def __init__(self, cfg: Path, env: dict[str, str]):
        r, w = os.pipe()
        if env.get("JOURNAL_STREAM") == "this-stderr":     # as systemd does: dev:inode of our stderr
            st = os.fstat(w)
            env = {**env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen([*monitor_command(), "--config", str(cfg), "run"], env=env,
                                     stdout=subprocess.PIPE, stderr=w, text=True)
        os.close(w)
        self.stderr_file = os.fdopen(r, encoding="utf-8", errors="replace")
        self.err: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.stderr_file:
            with self.cond:
                self.err.append((time.monotonic(), line.rstrip("\n")))
                self.cond.notify_all()

    @property
    def stderr(self) -> str:
        with self.cond:
            return "\n".join(line for _, line in self.err)

    def wait_log(self, pattern: str, timeout: float = 15.0) -> float:
        """The arrival time of the first stderr line matching `pattern`."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, line in self.err:
                    if rx.search(line):
                        return t
                left = end - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self.reader.is_alive():
                    raise AssertionError(f"no log line matching {pattern!r}; stderr:\n{self.stderr}")
                self.cond.wait(min(left, 0.2))

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        """Send `sig`; returns (exit code, seconds until the process was gone)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        took = time.monotonic() - t0
        self.reader.join(5)
        assert self.proc.stdout.read() == ""          # the service prints nothing on stdout
        return rc, took

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def service(tmp_path):
    """start(cfg, **env) -> Monitor; every process is killed at the end of the test."""
    started: list[Monitor] = []

    def start(cfg: Path, **env: str) -> Monitor:
        full = {k: v for k, v in os.environ.items()
                if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "MONITOR_CONFIG")}
        full.update(env)
        m = Monitor(cfg, full)
        started.append(m)
        return m

    yield start
    for m in started:
        m.kill()


def config(tmp_path: Path, base_url: str, *, poll_interval: float = 1, extra: str = "", **page) -> Path:
    lines = [f'[database]\nurl = "sqlite:///{tmp_path / "m.db"}"\n', "[[pages]]", 'name = "openai"',
             f'base_url = "{base_url}"', 'proxy_host = "status.openai.com"', f"poll_interval = {poll_interval}",
             "history_days = 0"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in page.items()]
    p = tmp_path / "config.toml"
    p.write_text("\n".join(lines) + "\n" + extra)
    p.chmod(0o600)
    return p


def outbox(db: Path):
    return db_rows(db, "select notifier, event, state from outbox where dedupe_key like ? order by id",
                   f"%{INCIDENT_FILE_PROCESSING}%")


def assert_clean_log(text: str, *secrets: str):
    for line in text.splitlines():
        assert LOG_LINE.match(line), f"not one event per line, level first: {line!r}"
    assert "Traceback" not in text
    for s in secrets:
        assert s not in text


# ------------------------------------------------------------------------------------------ the service


def test_ready_status_watchdog_notification_and_sigterm(tmp_path, service):
    """The whole life: READY after migration, STATUS with each poll's outcome, watchdog pings, a message
    within one poll interval (+1 s) of the page posting an update, SIGTERM -> STOPPING=1 and exit 0."""
    secret = "hunter2-" + uuid.uuid4().hex[:8]
    with ReplayServer(IncidentIoPage(incidentio_incidents()), now=BEFORE) as srv, HTTPServer() as web:
        url = web.url("/hook").replace("json://", f"json://ops:{secret}@") + "?+X-Check=fine"
        cfg = config(tmp_path, srv.base_url, extra=(
            '[[notifiers]]\nname = "hook"\nurl_env = "HOOK_URL"\n'))
        sd = NotifySocket(tmp_path)
        try:
            m = service(cfg, NOTIFY_SOCKET=sd.env_value, WATCHDOG_USEC="400000", HOOK_URL=url)
            t_ready, pid, text = sd.wait_for(lambda s: s == "READY=1")
            assert pid == m.proc.pid                    # NotifyAccess=main: the main process itself
            # READY comes after the migration and before any poll outcome
            assert db_rows(tmp_path / "m.db", "select version_num from alembic_version") == [(HEAD_REVISION,)]
            assert not any(s.startswith("STATUS=openai") for s in text.split("\n"))
            sd.wait_for(lambda s: s.startswith("STATUS=openai: ok (") and "unchanged" in s)
            sd.wait_for(lambda s: s == "WATCHDOG=1")
            # the page posts the first update: a message within one poll interval (+1 s)
            srv.now = STEPS[0]
            t_step = time.monotonic()
            t_sent = m.wait_log(rf"INFO monitor\.notify: sent opened for openai/{INCIDENT_FILE_PROCESSING} .* via hook$")
            latency = t_sent - t_step
            assert web.requests and latency <= 1 + 0.1 + 1, latency   # interval + jitter + 1 s
            body = web.requests[0].json()
            assert body["title"] == "Wait: Elevated errors affecting file uploads and file processing"
            assert web.requests[0].headers.get("X-Check") == "fine"
            sd.wait_for(lambda s: s.startswith("STATUS=openai: ok (") and "1 message(s) queued" in s)
            # the next update is an "updated" message
            srv.now = STEPS[1]
            m.wait_log(r"sent updated for openai/")
            pings_before = sum(1 for s in sd.lines() if s == "WATCHDOG=1")
            time.sleep(0.5)
            assert sum(1 for s in sd.lines() if s == "WATCHDOG=1") > pings_before   # still pinging
            rc, took = m.stop(signal.SIGTERM)
            sd.wait_for(lambda s: s == "STOPPING=1", timeout=1)
        finally:
            sd.close()
    assert rc == 0 and took < 5, (rc, took, m.stderr)
    assert outbox(tmp_path / "m.db") == [("hook", "opened", "sent"), ("hook", "updated", "sent")]
    assert_clean_log(m.stderr, secret)
    assert "INFO monitor.service: received SIGTERM, stopping" in m.stderr
    assert m.stderr.splitlines()[-1] == "INFO monitor.service: stopped"
    print(f"time to READY {t_ready - m.started:.2f} s; detection latency {latency:.2f} s; "
          f"SIGTERM to exit {took:.2f} s")


def test_abstract_socket_sigint_failing_page_and_journal_priorities(tmp_path, service):
    """NOTIFY_SOCKET in the abstract namespace ('@name'); a page that answers 500 shows in STATUS= and in a
    WARNING; under journald (JOURNAL_STREAM names our stderr) every line starts with its syslog priority, so
    `journalctl -p warning` finds the warnings; without a notifier the message goes to the log; SIGINT stops
    cleanly like SIGTERM."""
    from replay import Fault

    with ReplayServer(IncidentIoPage(incidentio_incidents()), now=STEPS[0]) as srv:
        for path in ("/", "/api/*", "/feed.atom", "/history.atom"):
            srv.faults[path] = Fault.error(500)
        cfg = config(tmp_path, srv.base_url)
        sd = NotifySocket(tmp_path, abstract=True)
        try:
            m = service(cfg, NOTIFY_SOCKET=sd.env_value, JOURNAL_STREAM="this-stderr")
            sd.wait_for(lambda s: s == "READY=1")
            sd.wait_for(lambda s: s.startswith("STATUS=openai: failed: ") and "HTTP 500" in s)
            # the page recovers: the open incident is stored, its message goes to the log
            srv.faults.clear()
            sd.wait_for(lambda s: s.startswith("STATUS=openai: ok ("))
            m.wait_log(r"^<6>INFO monitor\.notify: Wait: Elevated errors affecting file uploads")
            m.wait_log(r"sent opened for openai/.* via log$")
            rc, took = m.stop(signal.SIGINT)
            sd.wait_for(lambda s: s == "STOPPING=1", timeout=1)
            assert not any(s == "WATCHDOG=1" for s in sd.lines())     # none asked for
        finally:
            sd.close()
    assert rc == 0 and took < 5, (rc, took, m.stderr)
    assert_clean_log(m.stderr)
    assert m.stderr.startswith(f"<6>INFO monitor: store: {tmp_path / 'm.db'} (SQLite)\n"
                               "<6>INFO monitor.service: running: openai every 1 s; messages to the log")
    assert not re.search(r"^(?!<\d>)", m.stderr, re.M)               # every line has its priority
    assert re.search(r"^<4>WARNING monitor\.service: poll openai: failed: .*HTTP 500", m.stderr, re.M)
    assert "<6>INFO monitor.service: received SIGINT, stopping" in m.stderr


def test_sigterm_while_a_poll_hangs_leaves_no_partial_data(tmp_path, service):
    """SIGTERM while a poll waits on a page that never answers: exit 0 at once, nothing of that poll stored
    (not even the feed's new validators, which would hide the update from the next poll); after a restart
    the update arrives and its message is sent exactly once."""
    from replay import Fault

    with ReplayServer(IncidentIoPage(incidentio_incidents()), now=BEFORE) as srv:
        cfg = config(tmp_path, srv.base_url)
        sd = NotifySocket(tmp_path)
        try:
            m = service(cfg, NOTIFY_SOCKET=sd.env_value)
            sd.wait_for(lambda s: s.startswith("STATUS=openai: ok ("))
            db = tmp_path / "m.db"
            before = db_rows(db, "select page_incident_id, status from incidents order by id")
            states = db_rows(db, "select path, body_hash from source_states order by path")
            srv.faults[DETAIL] = Fault.never_answer()
            srv.now = STEPS[0]
            deadline = time.monotonic() + 10
            while not srv.requests_for(DETAIL):
                assert time.monotonic() < deadline, "the poll never asked for the incident's timeline"
                time.sleep(0.02)
            time.sleep(0.2)                               # the poll is now waiting on the hung request
            rc, took = m.stop(signal.SIGTERM)
            sd.wait_for(lambda s: s == "STOPPING=1", timeout=1)
            assert rc == 0 and took < 3, (rc, took, m.stderr)
            assert_clean_log(m.stderr)
            assert "poll of openai abandoned: shutting down" in m.stderr
            assert db_rows(db, "pragma integrity_check") == [("ok",)]
            assert db_rows(db, "select page_incident_id, status from incidents order by id") == before
            assert db_rows(db, "select path, body_hash from source_states order by path") == states
            orphans = db_rows(db, "select count(*) from updates u left join incidents i on i.id = u.incident_id "
                                  "where i.id is null")
            assert orphans == [(0,)] and outbox(db) == []
            # restart without the fault: the update is stored in full and reported once
            srv.faults.clear()
            m2 = service(cfg, NOTIFY_SOCKET=sd.env_value)
            m2.wait_log(r"sent opened for openai/.* via log$")
            time.sleep(1.2)                               # one more poll: nothing new
            rc2, _ = m2.stop(signal.SIGTERM)
        finally:
            sd.close()
    assert rc2 == 0
    assert outbox(db) == [("log", "opened", "sent")]
    assert db_rows(db, "select count(*) from updates u join incidents i on i.id = u.incident_id "
                       "where i.page_incident_id = ?", INCIDENT_FILE_PROCESSING) == [(1,)]
    assert db_rows(db, "pragma integrity_check") == [("ok",)]
    print(f"SIGTERM with a poll in flight to exit {took:.2f} s")


def test_never_two_polls_of_one_page_at_once(tmp_path, service):
    """A page slower than the poll interval: the next poll waits for the one in flight (max_instances=1),
    seen from the server: requests for the page never overlap in time. The watchdog keeps pinging."""

    class Slow:
        """A replay fault that answers normally after `delay` seconds and records each request's span."""

        def __init__(self, delay: float):
            self.delay, self.spans, self.lock = delay, [], threading.Lock()

        def __call__(self, h) -> bool:
            t0 = time.monotonic()
            h.replay._stop.wait(self.delay)
            with self.lock:
                self.spans.append((t0, time.monotonic()))
            return False

    slow = Slow(1.3)
    with ReplayServer(IncidentIoPage(incidentio_incidents()), now=STEPS[0]) as srv:
        srv.faults["/api/v2/incidents.json"] = slow
        cfg = config(tmp_path, srv.base_url)
        sd = NotifySocket(tmp_path)
        try:
            m = service(cfg, NOTIFY_SOCKET=sd.env_value, WATCHDOG_USEC="1000000")
            sd.wait_for(lambda s: s == "READY=1")
            time.sleep(4)
            rc, _ = m.stop()
        finally:
            sd.close()
    assert rc == 0
    spans = sorted(slow.spans)
    assert len(spans) >= 2, spans
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"two polls of one page overlapped: {spans}"
    assert len(spans) <= 4                                   # 4 s / 1.3 s, never one per 1 s tick
    assert "skipped: maximum number of running instances reached (1)" in m.stderr
    assert sum(1 for s in sd.lines() if s == "WATCHDOG=1") >= 5
    assert_clean_log(m.stderr)


def test_watchdog_is_withheld_when_a_poll_loop_stalls(tmp_path, monkeypatch):
    """In-process: the health rule behind WATCHDOG=1 (a page down is fine; a loop that stopped is not)."""
    from monitor.config import PageSettings, Settings

    st = Settings(pages=(PageSettings(name="a", base_url="http://127.0.0.1:9", poll_interval=10, deadline=5),))
    svc = Service.__new__(Service)
    svc.settings, svc.last_attempt = st, {}
    clock = [1000.0]
    monkeypatch.setattr("monitor.service.time.monotonic", lambda: clock[0])
    svc.started = 1000.0
    clock[0] += 2 * 10 + 5 + 30 - 1
    assert svc.healthy()
    clock[0] += 2
    assert not svc.healthy()
    svc.last_attempt["a"] = clock[0] - 1
    assert svc.healthy()


def test_one_line_formatter():
    import logging

    f = OneLineFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"), journal=True)
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = logging.LogRecord("monitor.x", logging.ERROR, __file__, 1, "bad: %s", ("a\nb",), sys.exc_info())
    out = f.format(rec)
    assert "\n" not in out and out.startswith("<3>ERROR monitor.x: bad: a | b | Traceback")


# ------------------------------------------------------------------------------------------ the unit


def unit_copy(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at this venv's console script (verify checks it exists)."""
    text = UNIT.read_text()
    exe = Path(sys.executable).parent / "monitor"
    if not exe.exists():
        pytest.skip("no monitor console script next to the interpreter")
    out = tmp_path / UNIT.name
    out.write_text(text.replace("/opt/openai-status-monitor/venv/bin/monitor", str(exe)))
    return out


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed")


def test_unit_matches_the_install_layout():
    text = UNIT.read_text()
    directives = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert directives["ExecStart"] == ("/opt/openai-status-monitor/venv/bin/monitor "
                                       "--config /etc/openai-status-monitor/config.toml run")
    assert directives["EnvironmentFile"] == "-/etc/openai-status-monitor/env"
    assert directives["Type"] == "notify" and directives["NotifyAccess"] == "main"
    assert directives["StateDirectory"] == "openai-status-monitor" and "DynamicUser" not in directives
    # a fixed user and group, the store group-readable: a monitoring user in the group reads it without root
    # (a DynamicUser's state directory is under /var/lib/private, 0700)
    assert directives["User"] == directives["Group"] == "openai-status-monitor"
    assert (directives["StateDirectoryMode"], directives["UMask"]) == ("0750", "0027")
    sysusers = (UNIT.parent / "openai-status-monitor.sysusers.conf").read_text()
    assert re.search(r"^u openai-status-monitor - ", sysusers, re.M)
    assert directives["Restart"] == "on-failure" and int(directives["WatchdogSec"]) > 0
    # stopping takes seconds: the poll is cancelled, a delivery gets DELIVERY_GRACE
    assert int(directives["TimeoutStopSec"]) >= 15


@needs_systemd_analyze
def test_unit_verifies(tmp_path):
    unit = unit_copy(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if unit.name in ln or "Unknown" in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


@needs_systemd_analyze
def test_unit_exposure_is_at_most_2(tmp_path):
    unit = unit_copy(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout
