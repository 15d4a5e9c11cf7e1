"""Delivering the outbox through real channels: an SMTP server (aiosmtpd) and an HTTP server (json://) on
127.0.0.1, a real SQLite store and a real PostgreSQL database, real apprise. Only Slack's servers are replaced, at the lowest HTTP layer
apprise reaches (requests' HTTPAdapter.send), so the exact JSON apprise would post is asserted."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
import requests
from sqlalchemy import select

from monitor.config import ConfigError, NotifierSettings, NotifySettings, Settings
from monitor.db import make_engine, transaction
from monitor.migrate import upgrade
from monitor.models import Delivery, Outbox
from monitor.notify import channels as ch
from monitor.notify import deliver as dv
from monitor.notify.deliver import DeliveryReport, backoff_seconds, deliver_due, send_test
from monitor.notify.render import render
from notify_servers import HTTPServer, SMTPServer, free_port

T0 = datetime(2024, 5, 8, 0, 40, tzinfo=timezone.utc)
URL = "https://status.openai.com/incidents/vn8j63zg56hz"
TITLE = "Elevated errors uploading files in ChatGPT"
# the real first update of the 2024-05-07 incident, plus hostile text a status page must not get through
BODY = ("We noticed increasing errors during file uploads in ChatGPT yesterday. We are currently investigating "
        "the the issue. This is impacting ChatGPT and not the API.\n\n"
        "R&D <script>alert(1)</script> <!channel> <https://evil.example|click>")
WAIT = ("Wait: OpenAI reports an active incident affecting file uploads. Retrying now will likely fail; "
        "this message will update when it is resolved.")
SLACK_TOKEN = "T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"


def make_payload(**over) -> dict:
    p = {"event": "opened", "page": "openai", "id": "vn8j63zg56hz", "title": TITLE, "url": URL,
         "status": "investigating", "impact": "minor", "tags": ["file-upload"], "components": ["ChatGPT"],
         "started_at": "2024-05-08T00:39:00Z", "resolved_at": None,
         "update": {"status": "investigating", "body": BODY, "published_at": "2024-05-08T00:39:00Z"}}
    p.update(over)
    return p


@pytest.fixture
def engine(store_url):
    url = store_url
    eng = make_engine(url)
    upgrade(url, eng)
    yield eng
    eng.dispose()


def settings(*notifiers: tuple[str, str], **notify) -> Settings:
    return Settings(notifiers=tuple(NotifierSettings(name=n, url=u) for n, u in notifiers),
                    notify=NotifySettings(**notify))


def queue(engine, notifier: str, *, payload: dict | None = None, created: datetime = T0, key: str = "k1",
          event: str = "opened") -> int:
    with transaction(engine) as s:
        row = Outbox(notifier=notifier, event=event, dedupe_key=key,
                     payload=json.dumps(payload or make_payload(), sort_keys=True), state="pending",
                     attempts=0, created_at=created, next_attempt_at=created)
        s.add(row)
        s.flush()
        return row.id


def outbox(engine, row_id: int) -> Outbox:
    with transaction(engine) as s:
        return s.get(Outbox, row_id)


def deliveries(engine, row_id: int) -> list[Delivery]:
    with transaction(engine) as s:
        return list(s.scalars(select(Delivery).where(Delivery.outbox_id == row_id).order_by(Delivery.id)))


def fast(settings_: Settings) -> dict:
    """Channels with apprise's per-object throttle off (tests send several messages through one object)."""
    return {ns.name: ch.channel_for(ns, throttle=False) for ns in settings_.notifiers}


# ------------------------------------------------------------------------------------------------ email

def test_email_arrives_with_text_and_html_parts(engine):
    with SMTPServer() as smtp:
        st = settings(("mail", smtp.url()))
        row = queue(engine, "mail")
        report = deliver_due(st, engine, now=T0)
        mails = smtp.mails
    assert report == DeliveryReport(sent=1, failed=0, gave_up=0)
    assert len(mails) == 1
    mail = mails[0]
    assert mail.message["Subject"] == f"Wait: {TITLE}"
    assert mail.rcpt_tos == ["ops@example.org"]
    assert mail.message.get_content_type() == "multipart/alternative"
    text, html = mail.part("text/plain"), mail.part("text/html")
    assert WAIT in text
    assert ("<p><strong>Wait:</strong> OpenAI reports an active incident affecting file uploads. Retrying now "
            "will likely fail; this message will update when it is resolved.</p>") in html
    assert "R&D <script>alert(1)</script> <!channel> <https://evil.example|click>" in text
    assert "R&amp;D &lt;script&gt;alert(1)&lt;/script&gt; &lt;!channel&gt; &lt;https://evil.example|click&gt;" \
        in html
    assert "<script>" not in html
    assert f'<a href="{URL}">{URL}</a>' in html and f"Details: {URL}" in text
    o = outbox(engine, row)
    assert (o.state, o.attempts, o.sent_at) == ("sent", 1, T0)
    assert [(d.ok, d.error) for d in deliveries(engine, row)] == [(True, None)]


# ---------------------------------------------------------------------------------------------- json://

def test_json_webhook_gets_the_exact_payload(engine):
    p = make_payload()
    with HTTPServer() as web:
        st = settings(("hook", web.url()))
        queue(engine, "hook", payload=p)
        assert deliver_due(st, engine, now=T0).sent == 1
        reqs = web.requests
    assert len(reqs) == 1
    r = reqs[0]
    assert (r.method, r.path, r.headers["Content-Type"]) == ("POST", "/hook", "application/json")
    assert r.json() == {"version": "1.0", "title": f"Wait: {TITLE}", "message": render(p, "text").body,
                        "attachments": [], "type": "warning"}
    assert r.json()["message"].startswith(WAIT + "\n\nStatus: Investigating\n")


# ------------------------------------------------------------------------------------------------ Slack

@pytest.fixture
def slack_posts(monkeypatch):
    """Replace the network under requests: every request apprise makes is captured and answered 200 "ok"
    (or `status` set on the returned list), nothing leaves the process."""
    class Posts(list):
        status = 200        # what the fake Slack answers

    posts = Posts()

    def fake_send(self, request, **kwargs):
        posts.append(request)
        resp = requests.Response()
        resp.status_code, resp._content = posts.status, (b"ok" if posts.status == 200 else b"no_service")
        resp.request, resp.url = request, request.url
        return resp

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", fake_send)
    import apprise.plugins.slack as slack_plugin

    monkeypatch.setattr(slack_plugin, "time", lambda: 1715128800.0)
    return posts


@pytest.mark.parametrize("url", [f"slack://{SLACK_TOKEN}", f"https://hooks.slack.com/services/{SLACK_TOKEN}"])
def test_slack_gets_the_exact_json(engine, slack_posts, url):
    p = make_payload(title="Uploads <!here> & downloads failing")
    st = settings(("team", url))
    assert isinstance(ch.channel_for(st.notifiers[0]), ch.SlackChannel)
    queue(engine, "team", payload=p)
    assert deliver_due(st, engine, now=T0, channels=fast(st)).sent == 1
    assert len(slack_posts) == 1
    req = slack_posts[0]
    assert (req.method, req.url) == ("POST", f"https://hooks.slack.com/services/{SLACK_TOKEN}")
    assert req.headers["Content-Type"] == "application/json; charset=utf-8"
    icon = "https://github.com/caronc/apprise/raw/master/apprise/assets/themes/default/apprise-warning-72x72.png"
    text = (
        "*Wait:* OpenAI reports an active incident affecting file uploads. Retrying now will likely fail; "
        "this message will update when it is resolved.\n\n"
        "*Status:* Investigating\n*Impact:* minor\n*Affected:* ChatGPT\n*Started:* 2024-05-08 00:39 UTC\n\n"
        "*Latest update (Investigating, 2024-05-08 00:39 UTC):*\n"
        "We noticed increasing errors during file uploads in ChatGPT yesterday. We are currently investigating "
        "the the issue. This is impacting ChatGPT and not the API.\n\n"
        "R&amp;D &lt;script&gt;alert(1)&lt;/script&gt; &lt;!channel&gt; &lt;https://evil.example|click&gt;\n\n"
        f"<{URL}|View incident>")
    assert json.loads(req.body) == {
        "mrkdwn": True,
        "attachments": [{"title": "Wait: Uploads &lt;!here&gt; &amp; downloads failing", "text": text,
                         "color": "#CACF29", "footer_icon": icon, "footer": "openai-status-monitor",
                         "ts": 1715128800.0}],
        "icon_url": icon,
    }
    assert text == render(p, "slack").body       # posted verbatim: exactly what we rendered


def test_slack_error_is_retried_and_token_never_shown(engine, slack_posts, caplog):
    caplog.set_level(logging.DEBUG)
    slack_posts.status = 500
    st = settings(("team", f"slack://{SLACK_TOKEN}"))
    row = queue(engine, "team")
    report = deliver_due(st, engine, now=T0, channels=fast(st))
    assert (report.sent, report.failed) == (0, 1)
    o = outbox(engine, row)
    assert o.state == "pending" and o.attempts == 1
    d, = deliveries(engine, row)
    assert not d.ok and not d.permanent and "500" in d.error
    for secret in ("TIiajkdnlazkcOXrIdevi7FQ", "A1BRTD4JD", "T1JJ3T3L2"):
        assert secret not in caplog.text
        assert secret not in d.error and secret not in o.last_error
    assert "T...2/A...D/T...Q" in fast(st)["team"].display


# ------------------------------------------------------------------------------------- outage, retries

@pytest.mark.parametrize("mode", ["error", "drop"])
def test_outage_then_recovery_sends_once(engine, mode):
    with HTTPServer() as web:
        st = settings(("hook", web.url()))
        row = queue(engine, "hook")
        web.mode = mode
        report = deliver_due(st, engine, now=T0)
        assert (report.sent, report.failed, report.gave_up) == (0, 1, 0)
        o = outbox(engine, row)
        assert (o.state, o.attempts, o.sent_at) == ("pending", 1, None)
        assert T0 + timedelta(seconds=15) <= o.next_attempt_at <= T0 + timedelta(seconds=30)
        d, = deliveries(engine, row)
        assert not d.ok and not d.permanent and d.at == T0
        assert d.error == o.last_error
        assert d.error.startswith("FAILURE: ") and ("500" in d.error if mode == "error" else "onnection" in d.error)

        web.mode = "ok"
        assert not deliver_due(st, engine, now=T0 + timedelta(seconds=10))     # not due yet
        assert len(web.requests) == 1
        later = T0 + timedelta(seconds=31)
        assert deliver_due(st, engine, now=later) == DeliveryReport(sent=1, failed=0, gave_up=0)
        assert len(web.requests) == 2
        o = outbox(engine, row)
        assert (o.state, o.attempts, o.sent_at) == ("sent", 2, later)
        assert [x.ok for x in deliveries(engine, row)] == [False, True]

        assert not deliver_due(st, engine, now=later + timedelta(hours=2))        # nothing left to send
        assert len(web.requests) == 2


def test_backoff_doubles_with_jitter_and_a_cap():
    assert backoff_seconds(1, 30, 1800, rand=lambda: 1.0) == 30
    assert backoff_seconds(1, 30, 1800, rand=lambda: 0.0) == 15
    assert backoff_seconds(3, 30, 1800, rand=lambda: 1.0) == 120
    assert backoff_seconds(20, 30, 1800, rand=lambda: 1.0) == 1800
    assert backoff_seconds(20, 30, 1800, rand=lambda: 0.0) == 900


def test_second_failure_waits_longer(engine):
    port = free_port()
    st = settings(("hook", f"json://127.0.0.1:{port}/x"))
    row = queue(engine, "hook")
    deliver_due(st, engine, now=T0)
    t1 = outbox(engine, row).next_attempt_at
    deliver_due(st, engine, now=t1)
    o = outbox(engine, row)
    assert o.attempts == 2 and t1 + timedelta(seconds=30) <= o.next_attempt_at <= t1 + timedelta(seconds=60)


def test_gives_up_on_an_old_row(engine, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    st = settings(("hook", f"json://127.0.0.1:{port}/x"), give_up_after_hours=24)
    row = queue(engine, "hook", created=T0 - timedelta(hours=25))
    report = deliver_due(st, engine, now=T0)
    assert (report.sent, report.failed, report.gave_up) == (0, 0, 1)
    o = outbox(engine, row)
    assert (o.state, o.attempts) == ("failed", 1)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "monitor.notify"]
    assert [r.getMessage() for r in errors] == [
        f"giving up on opened for openai/vn8j63zg56hz ({TITLE!r}) via hook after 1 attempts: {o.last_error}"]
    assert not deliver_due(st, engine, now=T0 + timedelta(days=1))


def test_row_of_a_notifier_no_longer_configured_fails_permanently(engine, caplog):
    row = queue(engine, "gone")
    report = deliver_due(settings(), engine, now=T0)
    assert report.gave_up == 1
    o = outbox(engine, row)
    assert (o.state, o.last_error) == ("failed", "notifier 'gone' is no longer configured")
    d, = deliveries(engine, row)
    assert d.permanent and not d.ok
    assert "giving up on opened for openai/vn8j63zg56hz" in caplog.text


def test_missing_url_env_fails_permanently(engine, monkeypatch):
    monkeypatch.delenv("NOTIFY_TEST_URL_MISSING", raising=False)
    st = Settings(notifiers=(NotifierSettings(name="hook", url_env="NOTIFY_TEST_URL_MISSING"),))
    row = queue(engine, "hook")
    assert deliver_due(st, engine, now=T0).gave_up == 1
    o = outbox(engine, row)
    assert o.state == "failed" and "NOTIFY_TEST_URL_MISSING is not set" in o.last_error
    assert deliveries(engine, row)[0].permanent


def test_failing_channel_does_not_block_another(engine):
    with HTTPServer() as web:
        st = settings(("down", f"json://127.0.0.1:{free_port()}/x"), ("up", web.url()))
        d1 = queue(engine, "down", key="a", created=T0 - timedelta(minutes=3))
        d2 = queue(engine, "down", key="b", created=T0 - timedelta(minutes=2))
        u1 = queue(engine, "up", key="a", created=T0 - timedelta(minutes=1))
        u2 = queue(engine, "up", key="b", created=T0)
        report = deliver_due(st, engine, now=T0, channels=fast(st))
        assert len(web.requests) == 2
    assert (report.sent, report.failed, report.gave_up, report.skipped) == (2, 1, 0, 1)
    assert [outbox(engine, i).state for i in (u1, u2)] == ["sent", "sent"]
    first, second = outbox(engine, d1), outbox(engine, d2)
    assert (first.state, first.attempts) == ("pending", 1)
    # not attempted in this run: untouched, due again next run
    assert (second.state, second.attempts, second.next_attempt_at) == ("pending", 0, T0 - timedelta(minutes=2))
    assert deliveries(engine, d2) == []


def test_crash_between_send_and_mark_repeats_at_most_once(engine, monkeypatch):
    with HTTPServer() as web:
        st = settings(("hook", web.url()))
        row = queue(engine, "hook")
        real_record = dv._record

        def crash(*args, **kwargs):
            raise RuntimeError("power cut")

        monkeypatch.setattr(dv, "_record", crash)
        with pytest.raises(RuntimeError):
            deliver_due(st, engine, now=T0)
        assert len(web.requests) == 1
        monkeypatch.setattr(dv, "_record", real_record)
        assert not deliver_due(st, engine, now=T0 + timedelta(seconds=10))     # leased: not sent again yet
        assert deliver_due(st, engine, now=T0 + timedelta(seconds=dv.LEASE_SECONDS)).sent == 1
        assert deliver_due(st, engine, now=T0 + timedelta(hours=1)).sent == 0
        assert len(web.requests) == 2
    assert outbox(engine, row).state == "sent"


def test_a_new_leader_sends_at_once_what_a_dead_one_had_claimed(engine, monkeypatch):
    """A process killed between claim and mark: the next leader makes its row due at once (no 5-minute
    wait for the lease), and leaves its own leases and rows waiting for a retry alone."""
    from monitor.leader import LeaderLock

    with HTTPServer() as web:
        st = settings(("hook", web.url()))
        dead = queue(engine, "hook", key="dead")
        monkeypatch.setattr(dv, "PROCESS_TOKEN", "a-process-that-died")
        monkeypatch.setattr(dv, "_record", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("SIGKILL")))
        with pytest.raises(RuntimeError):
            deliver_due(st, engine, now=T0)
        monkeypatch.undo()
        now = datetime.now(timezone.utc)
        later = (now + timedelta(minutes=10)).replace(microsecond=0)
        retry = queue(engine, "hook", key="retry")
        with transaction(engine) as s:              # a row waiting for its retry is not a lease
            s.get(Outbox, retry).next_attempt_at = later
        assert len(web.requests) == 1 and outbox(engine, dead).leased_by == "a-process-that-died"
        lock = LeaderLock(str(engine.url.render_as_string(hide_password=False)))
        try:
            assert lock.hold()
            assert lock.take_over(engine, service=False) == 1
        finally:
            lock.release()
        assert outbox(engine, dead).leased_by is None and outbox(engine, dead).next_attempt_at >= now - timedelta(seconds=1)
        assert outbox(engine, retry).next_attempt_at == later
        assert deliver_due(st, engine).sent == 1                  # now, not LEASE_SECONDS later
        assert len(web.requests) == 2 and outbox(engine, dead).state == "sent"
        assert outbox(engine, dead).leased_by is None


def test_a_row_is_claimed_by_exactly_one_of_many_at_once(engine):
    """Claims race (16 threads, each its own connection, released together): exactly one wins each row,
    whatever interleaving (an UPDATE ... WHERE state = 'pending' AND due ... RETURNING)."""
    import threading

    rows = [queue(engine, "hook", key=f"k{i}") for i in range(5)]
    for row in rows:
        start = threading.Barrier(16)
        won: list[object] = []

        def claim():
            start.wait()
            won.append(dv._claim(engine, row, T0))

        threads = [threading.Thread(target=claim) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sum(c is not None for c in won) == 1, won


def test_log_notifier_writes_one_line(engine, caplog):
    caplog.set_level(logging.INFO, logger="monitor.notify")
    row = queue(engine, "log")
    assert deliver_due(settings(), engine, now=T0).sent == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "monitor.notify" and r.levelno == logging.INFO]
    assert lines[0].startswith(f"Wait: {TITLE} | {WAIT} | Status: Investigating | Impact: minor | ")
    assert "\n" not in lines[0] and f"Details: {URL}" in lines[0]
    assert outbox(engine, row).state == "sent"


# -------------------------------------------------------------------------------------------- send_test

def test_send_test_reports_each_channel(engine):
    with SMTPServer() as smtp, HTTPServer() as web:
        web.mode = "error"
        st = settings(("mail", smtp.url()), ("hook", web.url()))
        results = send_test(st)
        mails = smtp.mails
    assert results[0] == ("mail", True, None)
    assert results[1][:2] == ("hook", False) and "500" in results[1][2]
    assert mails[0].message["Subject"].startswith("Test: ")
    assert "This is a test message" in mails[0].part("text/plain")
    with pytest.raises(ConfigError):
        send_test(st, "nope")


def test_send_test_without_notifiers_goes_to_the_log(caplog):
    caplog.set_level(logging.INFO, logger="monitor.notify")
    assert send_test(settings()) == [("log", True, None)]
    assert "Test: Elevated errors uploading files in ChatGPT (sample incident) | This is a test message" \
        in caplog.text


# ---------------------------------------------------------------------------------------------- secrets

def test_mail_password_never_logged_or_stored(engine, caplog):
    caplog.set_level(logging.DEBUG)
    with SMTPServer() as smtp:                  # no AUTH offered: the login fails
        url = (f"mailto://alerts:hunter2secret@127.0.0.1:{smtp.port}"
               "?from=alerts@example.org&to=ops@example.org")
        st = settings(("mail", url))
        row = queue(engine, "mail")
        report = deliver_due(st, engine, now=T0, channels=fast(st))
        results = send_test(st)
    assert report.failed == 1 and results[0][1] is False
    o = outbox(engine, row)
    d, = deliveries(engine, row)
    for text in (caplog.text, o.last_error, d.error, results[0][2], repr(fast(st)["mail"])):
        assert "hunter2secret" not in text
    assert "alerts:****@127.0.0.1" in fast(st)["mail"].display


_PLUGINS_LOADED = """
import json, sys
from monitor.config import NotifierSettings
from monitor.notify import channels as ch
notifiers = [NotifierSettings(name=f"n{i}", url=u) for i, u in enumerate(sys.argv[1:])]
ch.validate(notifiers)
loaded = [ch.channel_for(n) for n in notifiers]
assert all(c.error is None for c in loaded), [c.error for c in loaded]
print(json.dumps(sorted(m for m in sys.modules if m.startswith("apprise.plugins.") and m.count(".") == 2)))
"""


def test_a_plugin_module_apprise_moved_falls_back_to_its_own_lookup(monkeypatch):
    """The shortcut names apprise's plugin modules; if a release moves one, apprise's own lookup still loads
    the URL (slower, same result)."""
    monkeypatch.setitem(ch._PLUGINS, "slack", ("apprise.plugins.no_such_module", "NotifySlack"))
    channel = ch.channel_for(NotifierSettings(name="s", url=f"slack://{SLACK_TOKEN}"))
    assert channel.error is None and type(channel._apprise[0]).__name__ == "NotifySlack"


@pytest.mark.parametrize("urls, plugins", [
    ([f"slack://{SLACK_TOKEN}", f"https://hooks.slack.com/services/{SLACK_TOKEN}",
      "mailto://127.0.0.1:25?from=a@example.org&to=b@example.org", "jsons://127.0.0.1:9/hook"],
     ["apprise.plugins.base", "apprise.plugins.custom_json", "apprise.plugins.email", "apprise.plugins.slack"]),
    (["ntfy://127.0.0.1:9/topic"], None),      # any other scheme: apprise's own lookup, every plugin
])
def test_a_notifier_loads_only_its_own_apprise_plugin(urls, plugins):
    """apprise's own URL lookup imports all of its ~220 plugin modules (about 17 MB); validating and loading
    the notifiers of the schemes we know imports only theirs. In a fresh process: other tests load them all."""
    out = subprocess.run([sys.executable, "-c", _PLUGINS_LOADED, *urls], capture_output=True, text=True,
                         check=True).stdout
    loaded = json.loads(out)
    if plugins is None:
        assert len(loaded) > 150
    else:
        assert loaded == plugins


def test_validate(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as e:
        ch.validate([NotifierSettings(name="ok", url="json://127.0.0.1:9/x"),
                     NotifierSettings(name="bad", url="xyz://s3cr3t-token@example.org/s3cr3t")])
    assert str(e.value) == "notifiers[1].url: apprise does not know this URL (scheme 'xyz')"
    with pytest.raises(ConfigError) as e:
        ch.validate([NotifierSettings(name="m", url="mailto://127.0.0.1:25")])   # no user, no from
    assert str(e.value).startswith("notifiers[0].url: apprise cannot use this mailto:// URL")
    monkeypatch.setenv("NOTIFY_TEST_URL", "slack://T1JJ3T3L2/s3cr3t-token")
    with pytest.raises(ConfigError) as e:
        ch.validate([NotifierSettings(name="s", url_env="NOTIFY_TEST_URL")])
    assert str(e.value).startswith("notifiers[0].url_env: apprise cannot use this slack:// URL")
    monkeypatch.delenv("NOTIFY_TEST_URL")
    ch.validate([NotifierSettings(name="s", url_env="NOTIFY_TEST_URL"),
                 NotifierSettings(name="hook", url=f"https://hooks.slack.com/services/{SLACK_TOKEN}")])
    assert "environment variable NOTIFY_TEST_URL is not set" in caplog.text
    assert "s3cr3t" not in caplog.text and "s3cr3t" not in str(e.value)


def test_apprise_is_imported_only_when_a_notifier_is_configured(tmp_path):
    code = (
        "import sys, json\n"
        "from datetime import datetime, timezone\n"
        "from monitor.config import Settings\n"
        "from monitor.db import make_engine, transaction\nfrom monitor.migrate import upgrade\n"
        "from monitor.models import Outbox\n"
        "from monitor.notify.deliver import deliver_due, send_test\n"
        f"url = 'sqlite:///{tmp_path}/m.db'; eng = make_engine(url); upgrade(url, eng)\n"
        "now = datetime.now(timezone.utc)\n"
        "with transaction(eng) as s:\n"
        "    s.add(Outbox(notifier='log', event='opened', dedupe_key='k', payload=json.dumps({'title': 'x'}),\n"
        "                 state='pending', attempts=0, created_at=now, next_attempt_at=now))\n"
        "assert deliver_due(Settings(), eng).sent == 1\n"
        "assert send_test(Settings()) == [('log', True, None)]\n"
        "assert 'apprise' not in sys.modules, 'apprise imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
