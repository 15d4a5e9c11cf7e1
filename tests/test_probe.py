"""The probe of the OpenAI Files API, end to end: the real `monitor run` (probe interval 1 s) against a fake
Files API on loopback (tests/fake_openai.py), the replay server as status.openai.com stepping through the
2026-03-02 file-processing incident, and a json:// webhook receiving the messages. Plus the pure parts:
whose fault an answer is (table in tests/data/probe_cases.toml), the verdict, the config."""
from __future__ import annotations

import json
import secrets
import signal
import time
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from helpers import db_rows, run
from notify_servers import HTTPServer
from replay import INCIDENT_FILE_PROCESSING, Fault, IncidentIoPage, ReplayServer, incidentio_incidents
from test_service import BEFORE, STEPS, assert_clean_log, config, service  # noqa: F401  (service: fixture)

from monitor.verdict import PROBE_REASON, PageHealth, ProbeHealth, decide

WARNING_TITLE = "Wait: Uploads to the OpenAI Files API are failing from here"
ALL_CLEAR_TITLE = "Resolved: Uploads to the OpenAI Files API work again from here"
PAGE_TITLE = "Elevated errors affecting file uploads and file processing"
CASES = tomllib.loads((Path(__file__).parent / "data" / "probe_cases.toml").read_text())["case"]


def probe_config(tmp_path: Path, page_url: str, api: FakeOpenAI, hook: str, failures_to_warn: int = 2) -> Path:
    return config(tmp_path, page_url, extra=(
        f'[probe]\napi_key_env = "TEST_OPENAI_KEY"\nbase_url = "{api.base_url}"\ninterval = 1\n'
        f"failures_to_warn = {failures_to_warn}\n\n"
        f'[[notifiers]]\nname = "hook"\nurl = "{hook}"\n'))


def titles(web: HTTPServer) -> list[str]:
    return [r.json()["title"] for r in web.requests]


def wait_until(pred, what: str, timeout: float = 15.0) -> float:
    """Seconds it took for pred() to become true."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - t0


def results(tmp_path: Path) -> list[tuple]:
    return db_rows(tmp_path / "m.db", "select outcome, failure_class, detail from probe_results order by id")


def status_json(cfg: Path) -> tuple[int, dict]:
    r = run(cfg, "status", "--json", ok=None)
    return r.exit_code, json.loads(r.stdout)


def assert_key_only_in_header(key: str, tmp_path: Path, api: FakeOpenAI, srv: ReplayServer, web: HTTPServer,
                              stderr: str, *outputs: str) -> None:
    """The key went to the fake API in the Authorization header and nowhere else: not in a URL, a body, another
    header, the status page's requests, a message, a log line, a command's output, or the store (WAL too)."""
    assert api.requests
    for r in api.requests:
        assert key not in r.path and key.encode() not in r.body
        for name, value in r.headers.items():
            assert value == f"Bearer {key}" if name.lower() == "authorization" else key not in value
    for r in srv.requests:
        assert key not in r.path and "authorization" not in {k.lower() for k in r.headers}
    for r in web.requests:
        assert key.encode() not in r.body and key not in r.path and key not in json.dumps(r.headers)
    store = [p for p in tmp_path.glob("m.db*")]
    assert store
    for p in store:
        data = p.read_bytes()
        assert key.encode() not in data and b"Incorrect API key" not in data, p
    for text in (stderr, *outputs):
        assert key not in text and "Incorrect API key" not in text


# ------------------------------------------------------------------------------------------- end to end


def test_healthy_probes_delete_leftovers_and_leave_no_file_after_sigterm(tmp_path, service):
    """Healthy probes: upload, retrieve, content, delete, each latency and status stored; no message;
    `status` exit 0 with the probe's state. Leftovers of a killed daemon (by name prefix) are deleted at start,
    the user's own files are not; at most one probe file exists at any time; SIGTERM while an upload is in
    flight leaves no probe file."""
    key = "sk-proj-" + secrets.token_hex(16)
    with FakeOpenAI(key) as api, ReplayServer(IncidentIoPage(incidentio_incidents()), now=BEFORE) as srv, \
            HTTPServer() as web:
        api.add_file("openai-status-monitor-probe-0b6f1c9e-killed.txt")
        mine = api.add_file("quarterly-report.csv")
        cfg = probe_config(tmp_path, srv.base_url, api, web.url())
        m = service(cfg, TEST_OPENAI_KEY=key)
        api.wait(lambda: len([r for r in api.requests if r.method == "DELETE"]) >= 4, what="three probes")
        assert mine in api.files and not any("killed" in name for name in api.probe_files())
        first = [(r.method, r.path.split("?")[0]) for r in api.requests[:2]]
        assert first[0] == ("GET", "/v1/files") and api.requests[0].path.endswith("?purpose=user_data")
        code, data = status_json(cfg)
        assert code == 0 and data["verdict"] == "troubleshoot-locally", data
        assert data["probe"]["last_outcome"] == "ok" and data["probe"]["consecutive_failures"] == 0
        text = run(cfg, "status", ok=None).stdout
        assert "Probe (Files API): fresh, last probe" in text and ": uploads work" in text
        # a probe in flight at SIGTERM: the upload arrived, its answer has not
        api.upload_delay = 5.0
        uploads = len(api.seen("POST", "/v1/files"))
        api.wait(lambda: len([r for r in api.requests if r.method == "POST"]) > uploads and api.probe_files(),
                 what="an upload in flight")
        wal = (tmp_path / "m.db-wal").read_bytes()
        rc, took = m.stop(signal.SIGTERM)
        stored = db_rows(tmp_path / "m.db", "select outcome, upload_status, retrieve_status, content_status, "
                                            "delete_status, upload_ms, delete_ms from probe_results order by id")
    assert rc == 0 and took < 5, (rc, took, m.stderr)
    assert api.probe_files() == [] and mine in api.files          # nothing of ours left, theirs kept
    assert api.max_probe_files == 1
    assert web.requests == []
    assert len(stored) >= 3 and all(r[:5] == ("ok", 200, 200, 200, 200) for r in stored), stored
    assert all(r[5] >= 0 and r[6] >= 0 for r in stored)
    assert "deleted 1 leftover probe file(s)" in m.stderr and "probe abandoned: shutting down" in m.stderr
    assert_clean_log(m.stderr, key)
    assert key.encode() not in wal
    assert_key_only_in_header(key, tmp_path, api, srv, web, m.stderr, text, json.dumps(data))


def test_early_warning_then_the_page_posts_then_resolution(tmp_path, service):
    """Uploads fail (HTTP 500) while the page is silent: one early warning within failures_to_warn intervals,
    `status` wait/1 "unconfirmed"; the page then posts its incident: exactly one more message, the page's, and
    the incident records when the probe first failed (`show`, `history --json`); uploads recover and the page
    resolves: the resolution message, no probe all-clear; `status` 0."""
    key = "sk-proj-" + secrets.token_hex(16)
    with FakeOpenAI(key) as api, ReplayServer(IncidentIoPage(incidentio_incidents()), now=BEFORE) as srv, \
            HTTPServer() as web:
        cfg = probe_config(tmp_path, srv.base_url, api, web.url(), failures_to_warn=2)
        m = service(cfg, TEST_OPENAI_KEY=key)
        m.wait_log(r"INFO monitor\.probe: probe ok: upload 200")
        m.wait_log(r"INFO monitor\.service: poll openai: ok")
        api.fault = "500"
        took = wait_until(lambda: web.requests, "early warning")
        assert took <= 2 * 1 + 3, took                   # failures_to_warn intervals, slack for a loaded machine
        assert titles(web) == [WARNING_TITLE]
        body = web.requests[0].json()["message"]
        assert "failing from here since" in body and "status page has posted nothing yet" in body
        assert "HTTP 500 server_error" in body and "HTTP statuses: 500" in body
        code, data = status_json(cfg)
        assert (code, data["verdict"], data["reason"]) == (1, "wait", PROBE_REASON)
        assert data["probe"]["failing"] and data["probe"]["failure_class"] == "openai"
        assert data["probe"]["consecutive_failures"] >= 2 and data["probe"]["since"]
        time.sleep(2.5)                                   # more failed probes: still one warning
        assert titles(web) == [WARNING_TITLE]
        # the page posts its incident: its own message, no second early warning
        srv.now = STEPS[0]
        wait_until(lambda: len(web.requests) >= 2, "the page's message")
        time.sleep(2.5)
        assert titles(web) == [WARNING_TITLE, f"Wait: {PAGE_TITLE}"]
        assert "We are seeing elevated errors affecting file uploads" in web.requests[1].json()["message"]
        code, data = status_json(cfg)
        assert code == 2 and data["reason"].startswith("1 upload-related incident open")
        shown = json.loads(run(cfg, "show", INCIDENT_FILE_PROCESSING, "--json").stdout)
        listed = json.loads(run(cfg, "history", "--json").stdout)
        show_text = run(cfg, "show", INCIDENT_FILE_PROCESSING).stdout
        first_failure = db_rows(tmp_path / "m.db", "select min(started_at) from probe_results "
                                                   "where outcome = 'failed'")[0][0]
        # recovery; uploads fail again while the page's incident is open: no early warning (the page said it)
        api.fault = None
        wait_until(lambda: results(tmp_path)[-1][0] == "ok", "a good probe")
        n = len(results(tmp_path))
        api.fault = "500"
        wait_until(lambda: sum(r[0] == "failed" for r in results(tmp_path)[n:]) >= 3, "failed probes")
        api.fault = None
        wait_until(lambda: results(tmp_path)[-1][0] == "ok", "a good probe")
        assert titles(web) == [WARNING_TITLE, f"Wait: {PAGE_TITLE}"]
        # the page resolves
        srv.now = STEPS[-1]
        wait_until(lambda: any(t.startswith("Resolved: ") for t in titles(web)), "the resolution message")
        time.sleep(2.0)
        final_code, final = status_json(cfg)
        wal = (tmp_path / "m.db-wal").read_bytes()
        rc, _ = m.stop()
    assert rc == 0
    got = titles(web)
    assert got[:2] == [WARNING_TITLE, f"Wait: {PAGE_TITLE}"] and got[-1] == f"Resolved: {PAGE_TITLE}", got
    assert got.count(WARNING_TITLE) == 1 and ALL_CLEAR_TITLE not in got
    assert final_code == 0 and final["verdict"] == "troubleshoot-locally", final
    # when the probe first failed, before the page's incident was first seen here
    want = datetime.fromisoformat(first_failure).replace(tzinfo=timezone.utc)
    got_at = datetime.fromisoformat(shown["probe_first_failure_at"].replace("Z", "+00:00"))
    assert abs(got_at - want) < timedelta(milliseconds=1)
    seen_at = datetime.fromisoformat(shown["first_seen_at"].replace("Z", "+00:00"))
    assert 2 <= shown["probe_lead_seconds"] == int((seen_at - got_at).total_seconds())
    assert shown["started_at"] == "2026-03-02T15:12:07Z"           # the page's own start, as the page gives it
    (row,) = [r for r in listed if r["id"] == INCIDENT_FILE_PROCESSING]
    assert row["probe_first_failure_at"] == shown["probe_first_failure_at"]
    assert row["probe_lead_seconds"] == shown["probe_lead_seconds"]
    assert "probe: uploads failed from here since" in show_text and "(the page gives 2026-03-02 15:12" in show_text
    assert_clean_log(m.stderr, key)
    assert key.encode() not in wal
    assert_key_only_in_header(key, tmp_path, api, srv, web, m.stderr, json.dumps(shown), json.dumps(listed))


def test_whose_fault_all_clear_and_local_network(tmp_path, service):
    """503 then recovery before the page posts anything: one warning, one all-clear. 401 and 429
    insufficient_quota: our side, no message, `status` not wait, logged once each as a configuration problem.
    429 load shedding: OpenAI's side (a new outage, one warning). A timeout while the page answers: still
    OpenAI's side; when the page does not answer either: local, said so by `status`, no message."""
    key = "sk-proj-" + secrets.token_hex(16)
    with FakeOpenAI(key, hang=1.5) as api, \
            ReplayServer(IncidentIoPage(incidentio_incidents()), now=BEFORE) as srv, HTTPServer() as web:
        cfg = probe_config(tmp_path, srv.base_url, api, web.url(), failures_to_warn=2)
        m = service(cfg, TEST_OPENAI_KEY=key)
        m.wait_log(r"probe ok: upload 200")
        m.wait_log(r"poll openai: ok")
        api.fault = "503"
        wait_until(lambda: web.requests, "early warning")
        api.fault = None
        wait_until(lambda: len(web.requests) >= 2, "all-clear")
        assert titles(web) == [WARNING_TITLE, ALL_CLEAR_TITLE]
        assert "HTTP statuses: 503" in web.requests[1].json()["message"]
        for fault in ("401", "429_quota"):
            n = len(results(tmp_path))
            api.fault = fault
            wait_until(lambda: sum(r[1] == "user" for r in results(tmp_path)[n:]) >= 3, f"{fault} probes")
            code, data = status_json(cfg)
            assert code == 0 and data["verdict"] == "troubleshoot-locally", data
            assert data["probe"]["failure_class"] == "user" and not data["probe"]["failing"]
            text = run(cfg, "status", ok=None).stdout
            assert "FAILING on our side (the key, quota or request): not an outage" in text
        assert len(web.requests) == 2
        problems = [ln for ln in m.stderr.splitlines() if "configuration problem" in ln]
        assert len(problems) == 2 and "HTTP 401 invalid_api_key" in problems[0], problems
        assert "HTTP 429 insufficient_quota" in problems[1]
        api.fault = "429_shed"
        wait_until(lambda: len(web.requests) >= 3, "early warning for load shedding")
        assert titles(web)[2] == WARNING_TITLE and "(load shedding)" in web.requests[2].json()["message"]
        api.fault = "timeout"                              # no answer, but the status page answers
        wait_until(lambda: any("no answer within" in (r[2] or "") for r in results(tmp_path)), "a timeout")
        assert [r[1] for r in results(tmp_path) if "no answer within" in (r[2] or "")][0] == "openai"
        wait_until(lambda: status_json(cfg)[1]["reason"] == PROBE_REASON, "wait because of timeouts")
        for path in ("/", "/api/*", "/feed.atom", "/history.atom", "/proxy/*"):   # the page is gone too
            srv.faults[path] = Fault.error(500)
        wait_until(lambda: results(tmp_path)[-1][1] == "local", "a local failure", timeout=20)
        text = run(cfg, "status", ok=None)
        rc, _ = m.stop()
    assert rc == 0
    assert len(web.requests) == 3                          # no message for our key, account or network
    assert text.exit_code == 3 and "UNKNOWN" in text.stdout, text.stdout
    assert "FAILING on our own network (the status page does not answer either): not an outage" in text.stdout
    assert api.probe_files() == []
    assert_clean_log(m.stderr, key)
    assert_key_only_in_header(key, tmp_path, api, srv, web, m.stderr, text.stdout)


# ------------------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_whose_fault(case):
    from monitor.probe import classify

    cls, words = classify(case["step"], case["status"], case["body"].encode())
    assert cls == case["class"]
    assert words.startswith(case["words"])


def _probe(**kw) -> ProbeHealth:
    base = dict(interval=60, failures_to_warn=2, last_at=NOW - timedelta(seconds=30), last_outcome="failed",
                failure_class="openai", consecutive_failures=2, since=NOW - timedelta(minutes=2))
    return ProbeHealth(**{**base, **kw})


NOW = datetime(2026, 9, 8, 14, 0, tzinfo=timezone.utc)
FRESH = [PageHealth("openai", 60, NOW - timedelta(seconds=10))]


@pytest.mark.parametrize("probe, verdict, code", [
    (None, "troubleshoot-locally", 0),
    (_probe(), "wait", 1),
    (_probe(consecutive_failures=1), "troubleshoot-locally", 0),            # below failures_to_warn
    (_probe(last_at=NOW - timedelta(seconds=121)), "troubleshoot-locally", 0),   # stale: two intervals
    (_probe(failure_class="user"), "troubleshoot-locally", 0),
    (_probe(failure_class="local"), "troubleshoot-locally", 0),
    (_probe(last_outcome="ok", failure_class=None, consecutive_failures=0), "troubleshoot-locally", 0),
])
def test_verdict_with_the_probe(probe, verdict, code):
    v = decide([], FRESH, NOW, probe)
    assert (v.verdict, v.exit_code) == (verdict, code)
    assert (v.reason == PROBE_REASON) == (verdict == "wait")


def test_an_open_incident_outranks_the_probe():
    inc = {"page": "openai", "impact": "major", "title": "File uploads are delayed or failing"}
    v = decide([inc], FRESH, NOW, _probe())
    assert (v.verdict, v.exit_code, v.reason) == ("wait", 2, "1 upload-related incident open (worst impact: major)")


def test_probe_config_errors_are_one_line(tmp_path):
    cfg = config(tmp_path, "http://127.0.0.1:9", extra='[probe]\napi_key_env = "NOT_SET_ANYWHERE_KEY"\n')
    r = run(cfg, "run", ok=None)
    assert r.exit_code == 1
    assert r.output == f"Error: {cfg}: probe.api_key_env: environment variable NOT_SET_ANYWHERE_KEY is not set\n"
    cfg = config(tmp_path, "http://127.0.0.1:9", extra="[probe]\ninterval = 0.5\n")
    r = run(cfg, "status", ok=None)
    assert r.exit_code == 3 and "probe.interval: Input should be greater than or equal to 1" in r.output
    cfg = config(tmp_path, "http://127.0.0.1:9", extra='[probe]\nbase_url = "https://sk-x@api.openai.com/v1"\n')
    r = run(cfg, "history", ok=None)
    assert r.exit_code == 1 and "probe.base_url: must not carry credentials" in r.output


def test_probe_messages_are_plain_and_escaped():
    """The early warning and its all-clear in each format; third-party words (error codes) escaped."""
    from monitor.notify.render import render

    warn = {"kind": "probe", "event": "opened", "page": "openai", "id": "probe-1", "tags": ["file-upload"],
            "impact": "minor", "status": "investigating", "started_at": "2026-09-08T13:32:00Z", "resolved_at": None,
            "probe": {"failures": 2, "detail": "upload: HTTP 502 <!channel> & co", "statuses": [502, 503]}}
    text = render(warn, "text")
    assert (text.title, text.kind) == (WARNING_TITLE, "wait")
    assert text.body.split("\n\n") == [
        "Wait: uploads to the OpenAI Files API have been failing from here since 13:32 UTC, and the status page "
        "has posted nothing yet. Wait rather than troubleshoot locally; a message follows when the page posts an "
        "incident or uploads work again.",
        "Failing from here since: 2026-09-08 13:32 UTC\nFailed probes: 2\n"
        "Last failure: upload: HTTP 502 <!channel> & co\nHTTP statuses: 502, 503"]
    assert "Last failure:* upload: HTTP 502 &lt;!channel&gt; &amp; co" in render(warn, "slack").body
    assert "upload: HTTP 502 &lt;!channel&gt; &amp; co" in render(warn, "email").html
    clear = {**warn, "event": "resolved", "status": "resolved", "resolved_at": "2026-09-08T13:50:00Z"}
    msg = render(clear, "text")
    assert (msg.title, msg.kind) == (ALL_CLEAR_TITLE, "resolved")
    assert msg.body.startswith("Resolved after 18 min. Uploads to the OpenAI Files API work again from here; "
                               "the status page posted nothing. If uploads still fail, troubleshoot locally:\n1. ")
    assert "Working again since: 2026-09-08 13:50 UTC" in msg.body
