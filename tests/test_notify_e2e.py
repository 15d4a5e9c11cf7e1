"""Notifications end to end: real upload incidents of status.openai.com replayed step by step, each poll a
separate `monitor poll` process, messages to a real SMTP server and a real json:// webhook on loopback."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from helpers import db_rows, write_config
from notify_servers import HTTPServer, SMTPServer
from replay import ReplayServer, StatuspagePage

MONITOR = str(Path(sys.executable).with_name("monitor"))
UPLOAD = {"vn8j63zg56hz"}          # 2024-05-07 "Elevated errors uploading files in ChatGPT"


def poll(cfg: Path, env=None) -> subprocess.CompletedProcess:
    p = subprocess.run([MONITOR, "--config", str(cfg), "poll"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **(env or {})})
    assert "Traceback" not in p.stderr, p.stderr
    return p


def notifiers(web: HTTPServer, smtp: SMTPServer) -> str:
    return (f'[notify]\nretry_base_seconds = 0.01\nretry_max_seconds = 0.05\n\n'
            f'[[notifiers]]\nname = "hook"\nurl = "{web.url()}"\n\n'
            f'[[notifiers]]\nname = "mail"\nurl_env = "TEST_MAIL_URL"\nevents = ["opened", "resolved"]\n')


@pytest.fixture
def window(openai_history):
    """Every incident with an update between 2024-05-07 and 2024-05-09 (UTC): the upload incident and the
    unrelated ones around it."""
    start = next(i for i in openai_history if i.id == "vn8j63zg56hz").updates[0].at - timedelta(hours=20)
    end = start + timedelta(days=2)
    steps = sorted({u.at for i in openai_history for u in i.updates if start <= u.at <= end})
    others = {i.id for i in openai_history if any(start <= u.at <= end for u in i.updates)} - UPLOAD
    assert len(steps) >= 8 and others        # the window really has unrelated incidents too
    return start, steps


def test_one_message_per_event_none_for_unrelated_none_after_restart(tmp_path, openai_history, window):
    start, steps = window
    inc = next(i for i in openai_history if i.id == "vn8j63zg56hz")
    with ReplayServer(StatuspagePage(openai_history), now=start) as srv, HTTPServer() as web, SMTPServer() as smtp:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, extra=notifiers(web, smtp))
        env = {"TEST_MAIL_URL": smtp.url()}
        assert poll(cfg, env).returncode == 0
        assert web.requests == [] and smtp.mails == []        # history is not news
        for t in steps:
            srv.now = t + timedelta(seconds=30)
            assert poll(cfg, env).returncode == 0
        titles = [r.json()["title"] for r in web.requests]
        n = len(inc.updates)
        assert len(titles) == n, titles                        # opened, updated x (n-2), resolved
        assert titles[0].startswith("Wait: Elevated errors uploading files in ChatGPT")
        assert titles[-1].startswith("Resolved: Elevated errors uploading files in ChatGPT")
        assert all("uploading files" in t for t in titles)      # nothing for the unrelated incidents
        assert [m.message["Subject"] for m in smtp.mails] == [titles[0], titles[-1]]   # mail wants opened + resolved only
        html = smtp.mails[-1].part("text/html")
        assert html and "Resolved after" in html and "512 MB" in html
        # restarting and polling the same data again sends nothing
        for _ in range(2):
            assert poll(cfg, env).returncode == 0
        assert len(web.requests) == n and len(smtp.mails) == 2
        states = db_rows(tmp_path / "m.db", "select notifier, state from outbox")
        assert states and all(s == "sent" for _, s in states)


def test_channel_outage_is_retried_by_the_next_process(tmp_path, openai_history):
    inc = next(i for i in openai_history if i.id == "vn8j63zg56hz")
    with ReplayServer(StatuspagePage(openai_history), now=inc.updates[0].at - timedelta(hours=1)) as srv, \
            HTTPServer() as web, SMTPServer() as smtp:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, extra=notifiers(web, smtp))
        env = {"TEST_MAIL_URL": smtp.url()}
        poll(cfg, env)
        web.mode = "error"
        srv.now = inc.updates[0].at + timedelta(minutes=1)
        assert poll(cfg, env).returncode == 0                  # the page answered; the channel did not
        assert len(web.requests) == 1 and len(smtp.mails) == 1  # the mail channel was not held back
        pending = db_rows(tmp_path / "m.db", "select state, attempts, last_error from outbox where notifier='hook'")
        assert pending[0][0] == "pending" and pending[0][1] == 1 and "500" in (pending[0][2] or "")
        web.mode = "ok"
        poll(cfg, env)                                         # a new process picks the retry up
        assert len(web.requests) == 2 and web.requests[-1].json()["title"].startswith("Wait: ")
        poll(cfg, env)
        assert len(web.requests) == 2
        out = subprocess.run([MONITOR, "--config", str(cfg), "outbox"], capture_output=True, text=True, env={**os.environ, **env})
        assert out.stdout == "Nothing pending or failed.\n"


def test_no_notifier_logs_what_would_be_sent(tmp_path, openai_history):
    inc = next(i for i in openai_history if i.id == "vn8j63zg56hz")
    with ReplayServer(StatuspagePage(openai_history), now=inc.updates[0].at - timedelta(hours=1)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        poll(cfg)
        srv.now = inc.updates[0].at + timedelta(minutes=1)
        p = poll(cfg)
        lines = [ln for ln in p.stderr.splitlines() if ln.startswith("INFO monitor.notify: Wait: ")]
        assert len(lines) == 1 and "Wait: Elevated errors uploading files in ChatGPT" in lines[0]
        assert "Retrying now will likely fail" in lines[0]
