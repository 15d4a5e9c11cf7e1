"""Issue 13, "never silent, never wrong": each finding, through the real `monitor` CLI against the replay server
(real HTTP on 127.0.0.1) and a real SQLite store."""
from __future__ import annotations

import json
import re
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

import faults_report
from helpers import db_rows, history, run, write_config
from replay import (
    COMPONENT_FILE_UPLOADS, INCIDENT_CHATGPT_LOGIN, INCIDENT_FILE_EXPIRED, INCIDENT_FILE_PROCESSING, Fault, IncidentIoPage, ReplayIncident,
    ReplayServer, ReplayUpdate, StatuspagePage, incidentio_incidents, make_ulid,
)

from monitor.notify.render import render

UTC = timezone.utc
T0 = datetime(2026, 9, 14, 20, 30, tzinfo=UTC)
REOPEN_TEXTS = (
    "We are investigating elevated errors on file uploads in ChatGPT.",
    "This incident has been resolved. File uploads are working normally.",
    "We are seeing file upload errors again for some users and are monitoring a second fix.",
    "The second fix has held for an hour: file uploads are working again. This incident is resolved.",
)


def reopened_incident(kind: str) -> ReplayIncident:
    """resolved -> monitoring -> resolved, as status.openai.com did in September 2026; the reopening is
    displayed (`display_at`) an hour before it was posted."""
    steps = [("investigating", T0, None), ("resolved", T0 + timedelta(hours=1), None),
             ("monitoring", T0 + timedelta(hours=2), T0 + timedelta(hours=3)),
             ("resolved", T0 + timedelta(hours=5), None)]
    if kind == "incidentio":
        iid = make_ulid(T0, "incident/reopened")
        comps = [(COMPONENT_FILE_UPLOADS, "File uploads")]
    else:
        iid, comps = "rp0pn3d4x9zq", [("fu1", "File uploads")]
    ups = [ReplayUpdate(status=s, body=body, at=at, posted_at=posted,
                        id=make_ulid(posted or at, f"update/reopened/{i}") if kind == "incidentio" else f"up{i}x9zq")
           for i, ((s, at, posted), body) in enumerate(zip(steps, REOPEN_TEXTS))]
    return ReplayIncident(id=iid, title="Elevated errors on file uploads", impact="partial_outage" if
                          kind == "incidentio" else "major", components=comps, updates=ups,
                          component_impacts={COMPONENT_FILE_UPLOADS: "partial_outage"} if kind == "incidentio" else None)


def sql(db, statement: str) -> None:
    """One write to the store, committed."""
    con = sqlite3.connect(db)
    try:
        with con:
            con.execute(statement)
    finally:
        con.close()


def outbox(db) -> list[tuple[str, str, dict]]:
    return [(e, k, json.loads(p)) for e, k, p in db_rows(db, "select event, dedupe_key, payload from outbox order by id")]


@pytest.mark.parametrize("kind", ["statuspage", "incidentio"])
def test_reopened_incident_gives_one_message_per_step(kind, tmp_path):
    """Finding 1: opened, resolved, reopened (wait again), resolved again: four messages, each with its own
    text, and `monitor status` says wait while the incident is reopened."""
    inc = reopened_incident(kind)
    page = StatuspagePage([inc]) if kind == "statuspage" else IncidentIoPage([inc], api_bodies="markdown")
    with ReplayServer(page) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0)
        db = tmp_path / "m.db"
        posted = [u.posted for u in inc.updates]
        for i, t in enumerate(posted):
            srv.now = t + timedelta(minutes=1)
            run(cfg, "poll")
            if i == 2:   # reopened
                st = run(cfg, "status", ok=None)
                assert st.exit_code == 2, st.output          # major impact: wait
                assert st.output.startswith("WAIT: 1 upload-related incident open"), st.output
    rows = outbox(db)
    assert [e for e, _k, _p in rows] == ["opened", "resolved", "updated", "resolved"], rows
    assert len({k for _e, k, _p in rows}) == 4
    assert [p["update"]["body"] for _e, _k, p in rows] == list(REOPEN_TEXTS)
    titles = [render(p, "text").title for _e, _k, p in rows]
    assert titles == ["Wait: Elevated errors on file uploads", "Resolved: Elevated errors on file uploads",
                      "Wait again: Elevated errors on file uploads",
                      "Resolved again: Elevated errors on file uploads"]
    again = render(rows[2][2], "text").body
    assert again.startswith("Wait again: OpenAI reports an incident affecting file uploads it had resolved: "
                            "it is active again."), again
    assert rows[3][2]["resolved_at"] == "2026-09-15T01:30:00Z"     # the second resolution, not the first
    assert db_rows(db, "select status, resolved_at from incidents") == [("resolved", "2026-09-15 01:30:00.000000")]


def _mangle_json(body: bytes, edit) -> Fault:
    data = json.loads(body)
    edit(data)
    return Fault(status=200, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"})


def test_wrong_typed_fields_in_every_source(tmp_path):
    """Finding 2: fields of types nobody documented, in every source of an incident.io page with an upload
    incident open: no traceback, nothing stored lost, nothing sent, and `monitor status` says wait."""
    inc = next(i for i in incidentio_incidents() if i.id == INCIDENT_FILE_EXPIRED)
    page = IncidentIoPage(incidentio_incidents(), api_bodies="markdown")
    with ReplayServer(page) as srv:
        srv.now = inc.updates[2].posted + timedelta(minutes=1)      # monitoring: open
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0)
        db = tmp_path / "m.db"
        run(cfg, "poll")
        before = {t: db_rows(db, f"select * from {t} order by id") for t in
                  ("incidents", "updates", "incident_components", "tags", "outbox")}
        # the timeline is asked for again (a stored incident still missing it)
        sql(db, "update incidents set timeline_complete = 0")
        sql(db, "delete from source_states")
        now = srv.now

        def api(d):
            for x in d["incidents"]:
                x.update(incident_updates=5, impact=["major"], name=7, components="File uploads", resolved_at=3)

        def comps(d):
            d["components"] = [{"id": 1, "name": {"x": 1}, "status": 3}, 5, {"id": [], "name": "Files", "status": None}]

        def timeline(d):
            d["incident"].update(updates=5, affected_components="File uploads", current_worst_impact=4,
                                 component_impacts=[{"component_id": COMPONENT_FILE_UPLOADS,
                                                     "status": "under_maintenance"}, 3, {"component_id": 9}])

        handle = lambda path: srv.page.handle("GET", path, "", now).body  # noqa: E731
        feed = handle("/feed.atom").replace(b"<summary", b"<summary><b>Status: <i>5</i></b></summary><x", 1)
        srv.faults["/api/v2/incidents.json"] = _mangle_json(handle("/api/v2/incidents.json"), api)
        srv.faults["/api/v2/components.json"] = _mangle_json(handle("/api/v2/components.json"), comps)
        srv.faults["/proxy/*"] = _mangle_json(handle(f"/proxy/status.openai.com/incidents/{inc.id}"), timeline)
        srv.faults["/feed.atom"] = Fault(status=200, body=feed, headers={"Content-Type": "application/atom+xml"})
        r = run(cfg, "poll", ok=None)
        assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output
        assert any(p.startswith("/proxy/") for _m, p, _h in srv.requests), "the timeline was not asked for"
        st = run(cfg, "status", ok=None)
    assert "Traceback" not in st.output
    assert st.exit_code in (1, 2, 3) and st.output.startswith(("WAIT", "UNKNOWN")), st.output
    after = {t: db_rows(db, f"select * from {t} order by id") for t in before}
    assert after["outbox"] == before["outbox"]                           # nothing sent
    assert {u[:6] for u in before["updates"]} <= {u[:6] for u in after["updates"]}   # nothing lost
    assert [(i[3], i[6]) for i in after["incidents"]] == [(i[3], i[6]) for i in before["incidents"]]  # titles, status


def test_backoff_after_2000_failures(tmp_path):
    """Finding 3: a page dead for weeks (2,000 failed polls stored) is still counted and backed off."""
    with ReplayServer(StatuspagePage([reopened_incident("statuspage")])) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0, poll_interval=60.0)
        db = tmp_path / "m.db"
        run(cfg, "poll")
        sql(db, "update pages set consecutive_failures = 2000, not_before = null")
        srv.faults["/api/*"] = Fault.error(500)
        srv.faults["/history.atom"] = Fault.error(500)
        started = datetime.now(UTC)
        r = run(cfg, "poll", ok=None)
        said = next(ln for ln in r.output.splitlines() if ln.startswith("Error: "))
        said = said.replace(srv.base_url, "").removeprefix("Error: ")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "openai: failed: HTTP 500" in r.output
    (fails, not_before), = db_rows(db, "select consecutive_failures, not_before from pages")
    assert fails == 2001
    wait = datetime.fromisoformat(not_before).replace(tzinfo=UTC) - started
    assert timedelta(seconds=890) < wait <= timedelta(seconds=910)
    faults_report.record("page", "95", [
        "`dead-for-weeks`", "HTTP 500, with 2,000 failed polls already stored (about 3 weeks at the cap)",
        "all sources", f"exit 1: {said}",
        "consecutive_failures 2001; not_before = now + 900 s (the exponent is capped)"])


def test_config_tag_counts_as_upload_related(tmp_path):
    """Finding 4: a tag the config adds makes `status` wait, is in `history` by default and in messages."""
    inc = next(i for i in incidentio_incidents() if i.title == "Login issues")
    extra = '[tags.login]\npatterns = ["\\\\blog in\\\\b"]\n'
    with ReplayServer(IncidentIoPage(incidentio_incidents())) as srv:
        srv.now = inc.updates[0].posted + timedelta(minutes=1)
        cfg = write_config(tmp_path, {"openai": srv.base_url}, extra=extra, history_days=0)
        run(cfg, "poll")
        st = run(cfg, "status", ok=None)
    assert st.exit_code == 2 and st.output.startswith("WAIT: 1 upload-related incident open"), st.output
    assert "Login issues" in [h["title"] for h in history(cfg)]
    rows = outbox(tmp_path / "m.db")
    assert [(e, p["title"], p["tags"], p["uploads"]) for e, _k, p in rows] == [
        ("opened", "Login issues", ["login"], True)]
    assert render(rows[0][2], "text").body.startswith("Wait: OpenAI reports an active incident affecting file uploads")


def test_atlassian_feed_times_in_the_pages_zone(tmp_path, openai_history):
    """Finding 5: with the API down, a Berlin page's feed ("18:05 CEST") is read in Europe/Berlin."""
    incs = [i for i in openai_history if i.updates[0].at.year == 2024][-5:]
    with ReplayServer(StatuspagePage(incs, time_zone="Europe/Berlin")) as srv:
        srv.faults["/api/v2/incidents.json"] = Fault.error(500)
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0)
        feed = srv.page.handle("GET", "/history.atom", "", srv.now).body
        assert b" CEST&lt;/small&gt;" in feed
        out = run(cfg, "poll").output
    assert "left out" not in out, out
    want = {(i.id, u.at.strftime("%Y-%m-%d %H:%M")) for i in incs for u in i.updates}
    got = {(iid, t[:16]) for iid, t in db_rows(tmp_path / "m.db", "select i.page_incident_id, u.published_at "
                                                                 "from updates u join incidents i on i.id = u.incident_id")}
    assert got == want


def test_atlassian_feed_times_in_an_unknown_zone_are_not_guessed(tmp_path, openai_history):
    """Finding 5: no zone known (every JSON answer fails): a "PDT" time is left out and said, not read as UTC."""
    incs = [i for i in openai_history if i.updates[0].at.year == 2024][-2:]
    with ReplayServer(StatuspagePage(incs, time_zone="America/Los_Angeles")) as srv:
        srv.faults["/api/*"] = Fault.error(500)
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0)
        out = run(cfg, "poll").output.strip().replace(srv.base_url, "")
    assert re.search(r"update times in PDT left out: not a zone word of the page's time zone \(not known yet\)", out), out
    faults_report.record("page", "96", [
        "`local-times-unknown-zone`", "Atlassian feed times in PDT while every JSON answer (which names the "
        "page's `time_zone`) fails", "`/api/*`", f"exit 0: {out}",
        "none: the page answered"])
    wrong = {u.at.replace(tzinfo=None) + timedelta(hours=-7) for i in incs for u in i.updates}  # local read as UTC
    stored = {datetime.fromisoformat(t) for t, in db_rows(tmp_path / "m.db", "select published_at from updates")}
    assert not wrong & {t.replace(microsecond=0) for t in stored}


@pytest.mark.parametrize("url, says", [
    ("notascheme://abc", "notifiers[0].url: apprise does not know this URL (scheme 'notascheme')"),
])
def test_commands_that_send_check_notifier_urls(tmp_path, url, says):
    """Finding 6: the commands that send (`run`, `notify-test`, `check-config`) refuse a notifier URL no channel
    can use, before asking the page anything; `poll` refuses it before sending its first message (the message
    stays pending for the next poll, once the URL is fixed); the read commands do not look at notifiers
    (issue 24: they never load apprise) and answer as usual."""
    with ReplayServer(StatuspagePage([reopened_incident("statuspage")]), now=T0 + timedelta(minutes=5)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0,
                           extra=f'[[notifiers]]\nname = "ops"\nurl = "{url}"\n')
        cfg.chmod(0o600)
        for cmd in (["check-config"], ["notify-test"], ["run"]):
            r = run(cfg, *cmd, ok=None)
            assert (r.exit_code, r.output) == (1, f"Error: {cfg}: {says}\n"), cmd
        assert srv.requests == []
        r = run(cfg, "poll", ok=None)                   # the open incident: one message due
        assert (r.exit_code, r.output) == (1, f"Error: {cfg}: {says}\n")
        assert db_rows(tmp_path / "m.db", "select notifier, state, attempts from outbox") == [("ops", "pending", 0)]
        for cmd in (["history"], ["outbox"]):
            assert run(cfg, *cmd, ok=None).exit_code == 0, cmd


def test_database_url_with_an_unknown_driver(tmp_path):
    """Finding 6: file, key and reason, not SQLAlchemy's NoSuchModuleError."""
    cfg = tmp_path / "config.toml"
    cfg.write_text('[database]\nurl = "nosuchdb://x"\n')
    r = run(cfg, "history", ok=None)
    assert r.exit_code == 1
    assert r.output == f"Error: {cfg}: database.url: unknown database driver 'nosuchdb'\n"


def test_relative_sqlite_url_with_a_driver_lives_in_the_state_directory(tmp_path, monkeypatch):
    """Finding 6: `sqlite+pysqlite:///monitor.db` is in the state directory, like `sqlite:///monitor.db`."""
    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "config.toml"
    cfg.write_text('[database]\nurl = "sqlite+pysqlite:///monitor.db"\n')
    run(cfg, "db", "upgrade")
    assert (state / "monitor.db").exists() and not (tmp_path / "monitor.db").exists()


def test_api_impact_counts_when_timelines_are_unavailable(tmp_path):
    """Finding 7: the API's real impact (September 2026) is stored when the proxy timelines answer 404; a
    major upload incident makes `monitor status` exit 2 and messages say so."""
    inc = next(i for i in incidentio_incidents() if i.id == INCIDENT_FILE_PROCESSING)
    # the feed shows components' state now: File uploads back to operational while the incident is open
    page = IncidentIoPage(incidentio_incidents(), api_impact="real",
                          live_component_status={COMPONENT_FILE_UPLOADS: "operational"})
    with ReplayServer(page) as srv:
        srv.faults["/proxy/*"] = Fault.error(404)
        srv.now = inc.updates[1].posted + timedelta(minutes=1)
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0)
        run(cfg, "poll")
        st = run(cfg, "status", ok=None)
    assert st.exit_code == 2, st.output
    impacts = dict(db_rows(tmp_path / "m.db", "select page_incident_id, impact from incidents"))
    assert impacts[INCIDENT_FILE_PROCESSING] == "major"
    assert impacts[INCIDENT_CHATGPT_LOGIN] == "major"           # partial_outage, resolved: only the API knows
    (_e, _k, p), = outbox(tmp_path / "m.db")
    assert "Impact: major" in render(p, "text").body


def test_api_impact_never_overrides_the_proxys(tmp_path):
    """Finding 7: the proxy's component impacts rank first; the API's flattened "minor" does not lower them."""
    inc = next(i for i in incidentio_incidents() if i.id == INCIDENT_FILE_PROCESSING)
    with ReplayServer(IncidentIoPage(incidentio_incidents())) as srv:       # API impact flattened to minor
        srv.now = inc.updates[1].posted + timedelta(minutes=1)
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0)
        run(cfg, "poll")
        srv.now = inc.updates[2].posted + timedelta(minutes=1)
        srv.faults["/proxy/*"] = Fault.error(503)
        run(cfg, "poll")
    assert dict(db_rows(tmp_path / "m.db", "select page_incident_id, impact from incidents"))[
        INCIDENT_FILE_PROCESSING] == "major"


def test_withdrawn_timelines_give_one_warning_and_back_off(tmp_path):
    """Finding 8: every proxy path answers 404: one line per cause, for the poll and the first-run backfill;
    the next poll asks for no timeline again; the API's and feed's text is stored."""
    with ReplayServer(IncidentIoPage(incidentio_incidents(), api_bodies="markdown")) as srv:
        srv.faults["/proxy/*"] = Fault.error(404)
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=365)
        out = run(cfg, "poll").output.strip()
        assert out == ("openai: ok (3 source(s)), 5 new, 0 changed, warnings: timelines unavailable for 5 "
                       "incidents: HTTP 404; backfill: incident lists unavailable for 5 windows: HTTP 404"), out
        srv.clear_requests()
        out = run(cfg, "poll").output.strip()
        assert [p for _m, p, _h in srv.requests if p.startswith("/proxy/")] == []
        assert out == "openai: ok (2 source(s)), unchanged", out
        st = run(cfg, "status", ok=None).output
    assert "timelines unavailable" not in st
    bodies = {b for b, in db_rows(tmp_path / "m.db", "select body from updates")}
    assert all(bodies) and len(bodies) == sum(len(i.updates) for i in incidentio_incidents())


@pytest.mark.parametrize("window_updates", [True, False])
def test_backfill_takes_updates_from_the_window_lists(tmp_path, window_updates):
    """Issue 16: the window lists carry each incident's updates; a timeline is fetched only for an entry
    without them (requests <= windows + incidents whose entry has no updates)."""
    incs = incidentio_incidents()
    with ReplayServer(IncidentIoPage(incs, window_updates=window_updates)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0, kind="incidentio")
        srv.clear_requests()
        out = run(cfg, "backfill", "--since", "2025-06-01").output
        paths = [p for _m, p, _h in srv.requests]
    assert out.startswith("openai: ok"), out
    windows = [p for p in paths if "/incidents?" in p]
    timelines = [p for p in paths if re.search(r"/proxy/[^/]+/incidents/\w+$", p)]
    days = (datetime.now(UTC) - datetime(2025, 6, 1, tzinfo=UTC)).days
    assert len(windows) == -(-days // 90)
    assert len(timelines) == (0 if window_updates else len(incs))
    assert len(paths) == len(windows) + len(timelines)
    stored = db_rows(tmp_path / "m.db", "select count(*), sum(body != '') from updates")
    assert stored == [(sum(len(i.updates) for i in incs),) * 2]
    assert db_rows(tmp_path / "m.db", "select count(*) from incidents where timeline_complete") == [(len(incs),)]


def test_one_boundary_turns_any_exception_into_the_sources_error(caplog):
    """Whatever a kind's parser raises on an answer is that source's ParseError, logged with its type."""
    from monitor.sources import kind
    from monitor.sources.common import Context, ParseError

    ctx = Context("https://status.openai.com", "status.openai.com", T0)
    api = kind("incidentio")
    body = json.dumps({"incidents": [{"id": "01ABCDEF", "name": "x", "incident_updates": []}]}).encode()
    assert api.read("/api/v2/incidents.json", body, "application/json", ctx).incidents[0].page_incident_id == "01ABCDEF"

    class Broken(type(api)):
        def parse(self, path, body, content_type, ctx):
            return {}["missing"]

    with pytest.raises(ParseError, match=r"^cannot read this answer \(KeyError: 'missing'\)$"):
        Broken().read("/api/v2/incidents.json", body, "application/json", ctx)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "incidentio: cannot read /api/v2/incidents.json: KeyError: 'missing'")]


def test_unknown_page_kind_is_refused(tmp_path):
    cfg = write_config(tmp_path, {"openai": "http://127.0.0.1:9"}, kind="wordpress")
    r = run(cfg, "poll", ok=None)
    assert r.exit_code == 1
    assert r.output == f"Error: {cfg}: pages[0].kind: must be auto or one of incidentio, statuspage\n"
