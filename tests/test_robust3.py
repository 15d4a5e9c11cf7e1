"""Issue 25, "robustness round 3": what one header, a lock file, a busy store or a second poller can do.
Real `monitor` processes, the replay server over real HTTP, real SQLite files and a real PostgreSQL."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from helpers import db_rows, store_rows
from replay import INCIDENT_FILE_PROCESSING, IncidentIoPage, ReplayServer, incidentio_incidents
from test_service import config, monitor_command, service  # noqa: F401 - `service` is a fixture

MONITOR = str(Path(sys.executable).with_name("monitor"))
PY = sys.executable
INC = next(i for i in incidentio_incidents() if i.id == INCIDENT_FILE_PROCESSING)
OPEN = INC.updates[0].posted + timedelta(minutes=5)      # the upload incident is open


def need_root() -> None:
    """Tests that switch to an unprivileged user (runuser) need root; under CI=true they never skip."""
    if os.geteuid() != 0 or not shutil.which("runuser"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root with runuser: the read-only user tests must run")
        pytest.skip("needs root and runuser to run commands as an unprivileged user")


def _others_can_run(path: str) -> bool:
    """Every directory on the way is searchable, and the file executable, by a user of no group of ours."""
    p = Path(os.path.realpath(path))
    return all(d.stat().st_mode & stat.S_IXOTH for d in [p, *p.parents])


def nobody_python() -> str:
    """An interpreter of our Python version that `nobody` may run: ours (a pyenv build under /root is not
    reachable) or the system's."""
    if _others_can_run(sys.executable):
        return sys.executable
    system = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
    if os.path.exists(system) and _others_can_run(system):
        return system
    pytest.fail(f"no Python {sys.version_info[0]}.{sys.version_info[1]} that the user nobody may run")


SITE = sysconfig.get_paths()["purelib"]
BOOT = f"import site, sys; site.addsitedir({SITE!r})\n"


def as_nobody(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Python `code` run as the user nobody, with this venv's packages (the editable install of this tree)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    return subprocess.run([shutil.which("runuser"), "-u", "nobody", "--", nobody_python(), "-c", BOOT + code, *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd="/")


def monitor_as_nobody(*args: str) -> subprocess.CompletedProcess:
    """The real `monitor` CLI (monitor.cli.main, what the console script runs) as the user nobody."""
    return as_nobody("from monitor.cli import main\nsys.argv[0] = 'monitor'\nmain()\n", *args)


@contextmanager
def public_dir():
    """A root-owned 0755 directory in /tmp (pytest's tmp_path is 0700: nobody could not even reach it)."""
    d = Path(tempfile.mkdtemp(prefix="osm-r3-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------ 2. the leader lock

def test_a_replaced_lock_file_never_gives_two_leaders(tmp_path, service):  # noqa: F811
    """The lock file removed while the service holds its flock (a clean-up, tmpfiles): a second `monitor run`
    creates a new file and leads, and the first notices at its next check and stands by. Before, both led."""
    with ReplayServer(IncidentIoPage(incidentio_incidents()), now=OPEN) as srv:
        cfg = config(tmp_path, srv.base_url)
        a = service(cfg)
        a.wait_log(r"running: .*; leading$")
        os.remove(tmp_path / "m.db.leader")
        b = service(cfg)
        b.wait_log(r"running: .*; leading$")
        a.wait_log(rf"^WARNING monitor\.leader: lost the leader lock: {tmp_path}/m\.db\.leader was removed or replaced "
                   r"while this process held it; stepping down \(a process that locks the new file leads\)$")
        stepped = a.wait_log(r"^WARNING monitor\.service: no longer the leader: standing by$")
        b.wait_log(r"poll openai: ok")
        time.sleep(2.5)                 # two poll intervals: only b polls
        with a.cond:
            late = [line for t, line in a.err if t > stepped + 0.5 and "poll openai:" in line]
        with b.cond:
            polled_b = [line for t, line in b.err if t > stepped + 0.5 and "poll openai:" in line]
        assert late == [] and polled_b, (a.stderr, b.stderr)
        assert a.stop()[0] == 0 and b.stop()[0] == 0


def test_a_lock_file_this_user_cannot_read_is_an_error_naming_it(tmp_path):
    """A lock file left 0600 by root: the service user cannot lead, and says so as an ERROR with the path and
    the fix (it used to read as "another process leads", and nobody polled). A lock file root creates now is
    0644 whatever the umask, and the service user can flock it read-only."""
    need_root()
    hold = ("import logging, sys\nlogging.basicConfig(format='%(levelname)s %(name)s: %(message)s')\n"
            "from monitor.leader import LeaderLock\nprint(LeaderLock(sys.argv[1]).hold())\n")
    with public_dir() as d:
        lock = d / "m.db.leader"
        lock.touch(mode=0o600)
        lock.chmod(0o600)
        r = as_nobody(hold, f"sqlite:///{d}/m.db")
        assert (r.stdout, r.stderr) == ("False\n", (
            f"ERROR monitor.leader: cannot use the leader lock file {lock}: Permission denied; this process cannot lead "
            f"(poll or deliver): let this user read it (chmod 644 {lock}), or remove it while no monitor runs\n"))
        lock.unlink()
        old = os.umask(0o077)               # as a root shell with a strict umask runs `monitor poll`
        try:
            r = subprocess.run([PY, "-c", hold, f"sqlite:///{d}/m.db"], capture_output=True, text=True, timeout=60)
        finally:
            os.umask(old)
        assert r.stdout == "True\n" and stat.S_IMODE(lock.stat().st_mode) == 0o644, (r, oct(lock.stat().st_mode))
        r = as_nobody(hold, f"sqlite:///{d}/m.db")
        assert (r.stdout, r.stderr) == ("True\n", "")


# the leader row after a failed start (case 6): tests/test_web.py::test_port_in_use_is_one_line


# ------------------------------------------------------------------------- 6. the outbox's last write is fenced

DELIVER = ("import logging, sys\nlogging.basicConfig(format='%(levelname)s %(name)s: %(message)s', level='INFO')\n"
           "from monitor.config import NotifierSettings, Settings\nfrom monitor.db import make_engine\n"
           "from monitor.notify.deliver import deliver_due\n"
           "st = Settings(notifiers=(NotifierSettings(name='hook', url=sys.argv[2]),))\n"
           "r = deliver_due(st, make_engine(sys.argv[1]))\nprint(r.sent, r.failed, r.gave_up)\n")


class HeldHook:
    """A json:// endpoint that holds each POST until released, then answers 500."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.got, self.release = threading.Event(), threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.got.set()
                hook.release.wait(30)
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/hook?rto=30"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_sender_that_lost_its_lease_does_not_overwrite_the_new_holders_outcome(store_url):
    """Process A claims a message and its channel hangs past the lease; process B claims it and sends it. A's
    late failure (of a message days old: it would give up) must not mark B's sent message failed."""
    from notify_servers import HTTPServer
    from test_notify_delivery import T0, queue

    from monitor.db import make_engine, transaction
    from monitor.migrate import upgrade
    from monitor.models import Outbox

    engine = make_engine(store_url)
    upgrade(store_url, engine)
    row = queue(engine, "hook")                         # created in 2024: any failure now gives up
    held = HeldHook()
    try:
        with HTTPServer() as good:
            a = subprocess.Popen([PY, "-c", DELIVER, store_url, held.url], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            assert held.got.wait(30), a.communicate()
            # the lease runs out (as LEASE_SECONDS later) while A's send still hangs
            with transaction(engine) as s:
                s.get(Outbox, row).next_attempt_at = T0
            b = subprocess.run([PY, "-c", DELIVER, store_url, good.url()], capture_output=True, text=True,
                               timeout=60)
            assert (b.returncode, b.stdout) == (0, "1 0 0\n"), b.stderr
            held.release.set()
            out, err = a.communicate(timeout=60)
    finally:
        held.close()
    assert a.returncode == 0 and out == "0 0 0\n", (out, err)
    assert ("WARNING monitor.notify: not recording the failed attempt of opened for openai/vn8j63zg56hz "
            "('Elevated errors uploading files in ChatGPT') via hook: this process no longer holds the row's "
            "lease (another sender took it over)") in err.splitlines(), err
    state = store_rows(store_url, "select state, attempts, last_error from outbox where id = :i", i=row)
    assert state == [("sent", 1, None)], state
    engine.dispose()


# ------------------------------------------------------------------ 4. two pollers of one page on PostgreSQL

def test_two_polls_of_one_page_on_postgresql_never_fail_nor_duplicate(tmp_path, pg_url):
    """Two `monitor poll` processes that see the same new incident at the same time (a hand-run poll beside
    the leader). A transaction of the test holds the page's row until both are in their write, then lets
    go: the second waits for the first and then sees its rows. Before, both inserted the incident and the
    second failed with a duplicate key."""
    import psycopg

    from helpers import write_config

    with ReplayServer(IncidentIoPage(incidentio_incidents()), now=INC.updates[0].posted - timedelta(hours=1)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, url=pg_url, history_days=0)
        first = subprocess.run([MONITOR, "--config", str(cfg), "poll"], capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        srv.now = OPEN                                  # the upload incident appears
        dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as gate, psycopg.connect(dsn, autocommit=True) as watch:
            gate.execute("select id from pages where name = 'openai' for update")
            polls = [subprocess.Popen([MONITOR, "--config", str(cfg), "poll"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(2)]
            end = time.monotonic() + 30
            while time.monotonic() < end:               # both polls wait on a lock (the page row, or a key)
                n = watch.execute("select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                                  "and datname = current_database()").fetchone()[0]
                if n >= 2:
                    break
                time.sleep(0.05)
            assert n >= 2, [p.poll() for p in polls]
            gate.rollback()
            outs = [p.communicate(timeout=60) + (p.returncode,) for p in polls]
    for out, err, rc in outs:
        assert rc == 0 and "Traceback" not in err and "duplicate key" not in err, (out, err)
        assert out.startswith("openai: ok"), out
    assert store_rows(pg_url, "select count(*) from incidents where page_incident_id = :i",
                      i=INCIDENT_FILE_PROCESSING) == [(1,)]
    keys = store_rows(pg_url, "select dedupe_key, notifier, count(*) from outbox group by dedupe_key, notifier")
    assert keys and all(n == 1 for _, _, n in keys), keys


# ------------------------------------------------------------------------ 3. a busy store never stalls the loop

def test_healthz_answers_at_once_while_another_process_holds_the_write_lock(tmp_path, service):  # noqa: F811
    """Another process holds SQLite's write lock for 8 s while the service keeps polling (every 1 s): the
    polls wait for the store in worker threads, and /healthz keeps answering within a fraction of a second.
    Before, the poll's store work ran on the event loop and /healthz took up to 8 s."""
    from test_web import free_port, request, wait_until

    port = free_port()
    with ReplayServer(IncidentIoPage(incidentio_incidents()), now=OPEN) as srv:
        cfg = config(tmp_path, srv.base_url, extra=f'[http]\nlisten = "127.0.0.1:{port}"\n')
        m = service(cfg)
        m.wait_log(r"poll openai: ok")
        wait_until(lambda: request(port, "GET", "/healthz")[0] == 200, 15, "/healthz")
        locker = sqlite3.connect(tmp_path / "m.db", timeout=30, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        held_from = time.monotonic()
        took = []
        while time.monotonic() - held_from < 8:
            t = time.monotonic()
            status = request(port, "GET", "/healthz")[0]
            took.append(time.monotonic() - t)
            assert status in (200, 503)
            time.sleep(0.1)
        locker.execute("COMMIT")
        locker.close()
        m.wait_log(r"poll openai: ok", timeout=30)
        assert m.stop()[0] == 0
    print(f"/healthz during an 8 s write lock: {len(took)} requests, max {max(took) * 1000:.0f} ms, "
          f"median {sorted(took)[len(took) // 2] * 1000:.1f} ms")
    assert max(took) < 0.25, sorted(took)[-5:]


# ---------------------------------------------------------------------------------- 7. read-only users

def test_read_commands_work_for_a_user_who_may_only_read_the_store(tmp_path):
    """A Nagios check or an exporter as an unprivileged user, on a root-owned 0644 store in a 0755 directory:
    every read command answers, with the service's -wal/-shm present (a process has the store open) and
    without them (it stopped); a stale page is reported as not polled, saying why, never as a write error."""
    need_root()
    with public_dir() as d, ReplayServer(IncidentIoPage(incidentio_incidents()), now=OPEN) as srv:
        from helpers import write_config

        cfg = write_config(d, {"openai": srv.base_url}, history_days=0)
        cfg.chmod(0o644)
        poll = subprocess.run([MONITOR, "--config", str(cfg), "poll"], capture_output=True, text=True, timeout=60)
        assert poll.returncode == 0, poll.stderr
        db = d / "m.db"
        out_dir = d / "out"
        out_dir.mkdir()
        out_dir.chmod(0o777)
        for f in d.iterdir():
            if f.is_file():
                f.chmod(0o644)
        assert not (d / "m.db-wal").exists() and not (d / "m.db-shm").exists()
        root_status = subprocess.run([MONITOR, "--config", str(cfg), "status"], capture_output=True, text=True)
        assert root_status.returncode == 2 and root_status.stdout.startswith("WAIT: "), root_status.stdout

        def reads() -> None:
            st = monitor_as_nobody("--config", str(cfg), "status")
            assert (st.returncode, st.stdout.splitlines()[0]) == (2, root_status.stdout.splitlines()[0]), st
            hist = monitor_as_nobody("--config", str(cfg), "history", "--json")
            assert hist.returncode == 0 and INCIDENT_FILE_PROCESSING in [h["id"] for h in json.loads(hist.stdout)], hist
            show = monitor_as_nobody("--config", str(cfg), "show", INCIDENT_FILE_PROCESSING, "--json")
            assert show.returncode == 0 and json.loads(show.stdout)["id"] == INCIDENT_FILE_PROCESSING, show
            box = monitor_as_nobody("--config", str(cfg), "outbox", "--all", "--json")
            assert box.returncode == 0 and f"openai:{INCIDENT_FILE_PROCESSING}:opened" in [
                m["key"] for m in json.loads(box.stdout)], box
            rep = monitor_as_nobody("--config", str(cfg), "report", "--out", str(out_dir / "r.html"))
            assert rep.returncode == 0 and "<html" in (out_dir / "r.html").read_text(), rep

        reads()                                                 # no process has the store open
        assert not (d / "m.db-shm").exists()
        service = sqlite3.connect(db)                           # a process has it open: -wal and -shm exist
        try:
            service.execute("select count(*) from incidents").fetchall()
            assert (d / "m.db-shm").exists() and stat.S_IMODE((d / "m.db-shm").stat().st_mode) == 0o644
            reads()
            with service:                                       # the data goes stale: status cannot poll
                service.execute("update pages set last_success_at = '2020-01-01 00:00:00.000000'")
            st = monitor_as_nobody("--config", str(cfg), "status", "--json")
        finally:
            service.close()
        page = json.loads(st.stdout)["pages"][0]
        assert st.returncode == 3 and (page["polled_now"], page["skipped"]) == (
            False, f"this user (uid {pwd_uid('nobody')}) may only read the store {db}, so it cannot poll itself; "
                   "the service polls"), st


def pwd_uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


# ------------------------------------------------------------------------------------- 8. what a newcomer met

def test_the_package_builds_without_setuptools_warning_about_the_templates(tmp_path):
    """`make test`'s install printed a 40-line warning: monitor.web.templates was data outside `packages`.
    setuptools' own build_py (what pip runs) now copies the templates without it."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([PY, "-c", "from setuptools import setup; setup()", "-q", "build_py", "--build-lib",
                          str(tmp_path / "lib")], cwd=root, capture_output=True, text=True, timeout=120)
    shutil.rmtree(root / "build", ignore_errors=True)
    assert out.returncode == 0, out.stderr
    assert "Package would be ignored" not in out.stderr and "monitor.web.templates" not in out.stderr, out.stderr
    assert sorted(p.name for p in (tmp_path / "lib" / "monitor" / "web" / "templates").iterdir()) == [
        "page.css", "page.html"]


def test_run_says_where_the_store_is_first(tmp_path, service):  # noqa: F811
    m = service(config(tmp_path, "http://127.0.0.1:9"))
    m.wait_log(r"running: ")
    assert m.stop()[0] == 0
    assert m.stderr.splitlines()[0] == f"INFO monitor: store: {tmp_path / 'm.db'} (SQLite)"


def test_a_new_service_does_not_wait_for_an_old_back_off(tmp_path, service):  # noqa: F811
    """Failed polls of an earlier run left a back-off (11 failures, 1 s interval: 512 s): a service started
    now polls at once."""
    from helpers import write_config  # noqa: F401

    with ReplayServer(IncidentIoPage(incidentio_incidents()), now=OPEN) as srv:
        cfg = config(tmp_path, srv.base_url)
        first = subprocess.run([MONITOR, "--config", str(cfg), "poll"], capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        with sqlite3.connect(tmp_path / "m.db") as con:   # as record_failure leaves it after 11 failures
            con.execute("update pages set consecutive_failures = 11, last_poll_at = strftime('%Y-%m-%d %H:%M:%f000', "
                        "'now'), not_before = strftime('%Y-%m-%d %H:%M:%f000', 'now', '+512 seconds')")
        con.close()
        hand = subprocess.run([MONITOR, "--config", str(cfg), "poll"], capture_output=True, text=True, timeout=60)
        assert hand.returncode == 1 and "openai: skipped: backing off after 11 failed polls until" in hand.stderr
        srv.clear_requests()
        m = service(cfg)
        m.wait_log(r"poll openai: ok", timeout=10)
        assert srv.requests and m.stop()[0] == 0


# headless Chromium keeps its window at least 500 px wide: the page is laid out 390 px wide instead, and
# anything reaching past 390 px outside the chart's and the table's own scroll boxes would scroll the page
PROBE_JS = """<style>html { width: 390px; }</style><script>
const td = document.querySelector('td[colspan]');
const text = document.body.innerText;
document.title = JSON.stringify({
  over: [...document.querySelectorAll('main *')].filter(e => !e.closest('figure, .table-wrap')
          && e.getBoundingClientRect().right > 390.5).map(e => e.tagName + '.' + e.className),
  before: td ? getComputedStyle(td, '::before').content : null,
  empty_chart: (document.querySelector('.empty-chart') || {}).innerText || null,
  outcome_shown: text.split(%s).length - 1});
</script>"""


def test_the_page_at_390_px_on_a_failing_page_with_long_urls(tmp_path):
    """The page (as `monitor report` writes it; the service serves the same template) in Chromium at 390 px:
    the long URLs of a failing page wrap (no sideways scroll of the page itself), the empty table's card has
    no ": " label, the error is shown once, and the empty chart says there is nothing to plot."""
    from test_web import chromium
    from helpers import write_config

    long_url = "http://127.0.0.1:9/" + "averylongpathsegment" * 8
    cfg = write_config(tmp_path, {"openai": long_url}, history_days=0)
    poll = subprocess.run([MONITOR, "--config", str(cfg), "poll"], capture_output=True, text=True, timeout=60)
    assert poll.returncode == 1
    out = tmp_path / "r.html"
    rep = subprocess.run([MONITOR, "--config", str(cfg), "report", "--out", str(out)], capture_output=True,
                         text=True, timeout=60)
    assert rep.returncode == 0, rep.stderr
    html = out.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE_JS % json.dumps(f"cannot connect to {long_url}/api/v2/summary.json") + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        got = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              f"--user-data-dir={profile}", "--window-size=390,844", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=90)
    assert got.returncode == 0, got.stderr[-2000:]
    import html as html_lib
    import re

    seen = json.loads(html_lib.unescape(re.search(r"<title>(.*?)</title>", got.stdout, re.S).group(1)))
    assert seen["over"] == [], seen
    assert seen["before"] in ("none", "normal"), seen
    assert seen["empty_chart"] == "Nothing to plot yet: no upload-related incident is stored.", seen
    assert seen["outcome_shown"] == 1, (seen, re.sub(r"<[^>]+>", "", got.stdout)[:3000])
