"""Ingest end to end: the real CLI polling a real HTTP server that replays real incidents of both page kinds
at a simulated time. Each test steps through an incident as it unfolded; the ones that exercise the store run
on SQLite and on PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from helpers import db_rows, history, run, store_rows, write_config
from replay import Fault, IncidentIoPage, ReplayServer, StatuspagePage, incidentio_incidents, load_history

UTC = timezone.utc
FILE_EXPIRED_ID = "01KA1N7MK0N4B01HJ26Q9N3SAF"     # 2025-11-14 "... the file has expired"
FILE_PROCESSING_ID = "01KJQHPJARE2JBNZZR2W75SBMG"  # 2026-03-02 file uploads and file processing
UPLOADS_2024 = "vn8j63zg56hz"                      # 2024-05-07 "Elevated errors uploading files in ChatGPT"


def by_id(rows):
    return {r["id"]: r for r in rows}


def _url(store) -> str:
    """A store URL, or the path of a SQLite file."""
    return store if isinstance(store, str) else f"sqlite:///{store}"


def updates(store, incident_id):
    return store_rows(_url(store), "select u.status, u.body, u.source from updates u join incidents i "
                      "on i.id = u.incident_id where i.page_incident_id = :i order by u.published_at", i=incident_id)


def outbox(store):
    return store_rows(_url(store), "select dedupe_key, notifier, event, state from outbox order by id")


# ---------------------------------------------------------------------------------------- Statuspage


def test_statuspage_upload_incident_step_by_step(tmp_path, openai_history, store_url):
    inc = next(i for i in openai_history if i.id == UPLOADS_2024)
    with ReplayServer(StatuspagePage(openai_history), now=inc.updates[0].at - timedelta(hours=1)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, url=store_url)
        out = run(cfg, "poll").stdout
        assert out.startswith("openai: ok (")
        assert UPLOADS_2024 not in by_id(history(cfg, "--all"))
        assert outbox(store_url) == []  # the first poll's resolved history is not news
        seen_keys = []
        for n, u in enumerate(inc.updates, 1):
            srv.now = u.at + timedelta(minutes=1)
            run(cfg, "poll")
            rows = by_id(history(cfg))
            assert rows[UPLOADS_2024]["status"] == u.status
            assert [s for s, _, _ in updates(store_url, UPLOADS_2024)] == [x.status for x in inc.updates[:n]]
            keys = [k for k, *_ in outbox(store_url)]
            assert len(keys) == n, keys          # one message per step: opened, updated..., resolved
            seen_keys = keys
        assert [e for _, _, e, _ in outbox(store_url)] == (
            ["opened"] + ["updated"] * (len(inc.updates) - 2) + ["resolved"])
        # polling the same data again, or after a restart of the process, adds nothing
        run(cfg, "poll")
        run(cfg, "poll")
        assert [k for k, *_ in outbox(store_url)] == seen_keys
        r = rows[UPLOADS_2024]
        assert r["title"] == "Elevated errors uploading files in ChatGPT"
        assert r["tags"] == ["file-upload"] and r["components"] == ["ChatGPT"]
        assert r["resolved_at"] == inc.updates[-1].at.isoformat().replace("+00:00", "Z")
        assert r["url"].endswith(f"/incidents/{UPLOADS_2024}")


def test_history_json_contract_filters_and_order(tmp_path, openai_history, store_url):
    with ReplayServer(StatuspagePage(openai_history)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, url=store_url)
        run(cfg, "poll")
    everything = history(cfg, "--all")
    assert len(everything) == 50                     # what incidents.json offers
    starts = [r["started_at"] for r in everything]
    assert starts == sorted(starts, reverse=True)
    for r in everything:
        assert {"page", "id", "title", "url", "status", "impact", "tags", "started_at", "resolved_at",
                "components"} <= set(r)
        assert r["status"] in ("investigating", "identified", "monitoring", "resolved", "postmortem")
        assert r["impact"] in ("none", "minor", "major", "critical")
    upload = history(cfg)
    assert upload and all(set(r["tags"]) & {"file-upload", "file-expired", "data-analysis"} for r in upload)
    assert {r["id"] for r in upload} < {r["id"] for r in everything}
    since = history(cfg, "--all", "--since", "2024-08-01")
    assert since and all(r["started_at"] >= "2024-08-01" for r in since)
    assert len(since) < len(everything)
    assert history(cfg, "--tag", "file-expired") == []
    assert history(cfg, "--all", "--page", "nope") == []


def test_statuspage_feed_only_when_api_is_down(tmp_path, openai_history):
    inc = next(i for i in openai_history if i.id == UPLOADS_2024)
    with ReplayServer(StatuspagePage(openai_history), now=inc.updates[1].at + timedelta(minutes=5)) as srv:
        srv.faults["/api/v2/*"] = Fault(status=503)
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        res = run(cfg, "poll")
        assert "HTTP 503" in res.stdout
        got = by_id(history(cfg))[UPLOADS_2024]
        assert got["status"] == "identified"
        bodies = [b for _, b, _ in updates(tmp_path / "m.db", UPLOADS_2024)]
        assert bodies == [u.body for u in inc.updates[:2]]


# ---------------------------------------------------------------------------------------- incident.io


def io_server(now=None, **kw):
    return ReplayServer(IncidentIoPage(incidentio_incidents(), **kw), now=now)


def step_times(incident_id):
    inc = next(i for i in incidentio_incidents() if i.id == incident_id)
    return inc, [u.posted + timedelta(seconds=30) for u in inc.updates]


@pytest.mark.parametrize("api_bodies", ["empty", "markdown", "missing"])
def test_incidentio_incident_step_by_step(tmp_path, api_bodies, store_url):
    inc, times = step_times(FILE_EXPIRED_ID)
    with io_server(api_bodies=api_bodies, now=times[0] - timedelta(hours=2)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, url=store_url)
        run(cfg, "poll")
        for n, t in enumerate(times, 1):
            srv.now = t
            run(cfg, "poll")
            stored = updates(store_url, FILE_EXPIRED_ID)
            assert [s for s, _, _ in stored] == [u.status for u in inc.updates[:n]]
            assert all(b.strip() for _, b, _ in stored), stored    # every text stored, whatever the API gave
            assert len(outbox(store_url)) == n
        # the feed restamps itself and rewrites component states: none of that is news
        for _ in range(3):
            run(cfg, "poll")
        assert len(outbox(store_url)) == len(times)
        row = by_id(history(cfg))[FILE_EXPIRED_ID]
        assert row["status"] == "resolved" and "file-expired" in row["tags"]
        assert row["components"] == ["File uploads"] and row["impact"] == "major"


def test_incidentio_live_component_state_change_is_not_an_update(tmp_path):
    inc, times = step_times(FILE_PROCESSING_ID)
    with io_server(now=times[1]) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        run(cfg, "poll")
        before = updates(tmp_path / "m.db", FILE_PROCESSING_ID)
        n_out = len(outbox(tmp_path / "m.db"))
        comp_ids = [cid for cid, _ in inc.components]
        srv.page.live_component_status = {comp_ids[0]: "full_outage"}
        run(cfg, "poll")
        srv.page.live_component_status = {comp_ids[0]: "operational"}
        run(cfg, "poll")
        assert updates(tmp_path / "m.db", FILE_PROCESSING_ID) == before
        assert len(outbox(tmp_path / "m.db")) == n_out


def test_incidentio_source_disappears_mid_incident(tmp_path):
    inc, times = step_times(FILE_PROCESSING_ID)
    with io_server(now=times[0]) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        run(cfg, "poll")
        srv.faults["/feed.atom"] = Fault(status=502)
        srv.now = times[1]
        assert "HTTP 502" in run(cfg, "poll").stdout
        srv.faults.clear()
        srv.faults["/proxy/*"] = Fault(status=500)
        srv.faults["/api/v2/*"] = Fault(status=500)
        srv.now = times[2]
        run(cfg, "poll")                       # only the feed answers: latest text still arrives
        srv.faults.clear()
        for t in times[3:]:
            srv.now = t
            run(cfg, "poll")
        stored = updates(tmp_path / "m.db", FILE_PROCESSING_ID)
        assert [s for s, _, _ in stored] == [u.status for u in inc.updates]
        assert all(b for _, b, _ in stored)
        events = [e for k, _, e, _ in outbox(tmp_path / "m.db") if FILE_PROCESSING_ID in k]
        assert events == ["opened"] + ["updated"] * (len(times) - 2) + ["resolved"]


def test_incidentio_api_only(tmp_path):
    inc, times = step_times(FILE_PROCESSING_ID)
    with io_server(api_bodies="markdown", now=times[-1]) as srv:
        srv.faults["/feed.atom"] = Fault(status=404)
        srv.faults["/proxy/*"] = Fault(status=404)
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        run(cfg, "poll")
        stored = updates(tmp_path / "m.db", FILE_PROCESSING_ID)
        assert [s for s, _, _ in stored] == [u.status for u in inc.updates]
        assert {src for *_, src in stored} == {"api"}
        assert by_id(history(cfg))[FILE_PROCESSING_ID]["status"] == "resolved"


def test_incidentio_backfill_reaches_older_incidents(tmp_path, store_url):
    with io_server(api_limit=1, feed_limit=1) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, url=store_url, history_days=400)
        run(cfg, "poll")
        ids = {r["id"] for r in history(cfg, "--all")}
        assert ids == {i.id for i in incidentio_incidents()}   # the rest came through the windows
        windows = [p for _, p, _ in srv.requests if "/incidents?start_at=" in p]
        assert len(windows) == 5                                  # 400 days in windows of 90
        assert outbox(store_url) == []                    # history is not news
        out = run(cfg, "backfill").stdout
        assert out.startswith("openai: ok")
        stored = updates(store_url, FILE_EXPIRED_ID)
        assert len(stored) == 4 and all(b for _, b, _ in stored)


def test_two_pages_one_failing_other_still_stored(tmp_path, anthropic_history):
    with ReplayServer(StatuspagePage(anthropic_history, name="Anthropic")) as good:
        cfg = write_config(tmp_path, {"anthropic": good.base_url, "broken": "http://127.0.0.1:9"})
        res = run(cfg, "poll", ok=None)
        assert res.exit_code == 1
        assert "anthropic: ok" in res.stdout
        assert "broken: failed" in res.output
        assert len(history(cfg, "--all", "--page", "anthropic")) == 50


def test_show_timeline_components_and_tag_reason(tmp_path, store_url):
    with io_server() as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, url=store_url)
        run(cfg, "poll")
    out = run(cfg, "show", FILE_EXPIRED_ID).stdout
    assert out.splitlines()[0].startswith("File uploads to ChatGPT conversations are failing")
    assert "Components: File uploads (partial_outage)" in out
    assert "file-expired: rule file-expired/" in out and "has expired" in out
    assert out.count("[proxy]") == 4
    missing = run(cfg, "show", "nope", ok=None)
    assert missing.exit_code == 1 and missing.output == "Error: no stored incident with id 'nope'\n"


def test_retag_after_rule_change(tmp_path, store_url):
    with io_server() as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, url=store_url)
        run(cfg, "poll")
        assert not any("codex" in r["title"].lower() for r in history(cfg))
        text = cfg.read_text() + "\n[tags.codex]\npatterns = ['\\bcodex\\b']\n"
        cfg.write_text(text)
        assert run(cfg, "retag").stdout == "1 of 5 incidents changed tags\n"
        assert [r["title"] for r in history(cfg, "--tag", "codex")] == [
            "Codex cloud tasks failing to clone GitHub repositories"]
        assert run(cfg, "retag").stdout == "0 of 5 incidents changed tags\n"


def test_db_upgrade_command(tmp_path):
    cfg = write_config(tmp_path, {"openai": "http://127.0.0.1:9"})
    from monitor.migrate import HEAD_REVISION      # the shipped head (test_db checks it against Alembic's)

    assert run(cfg, "db", "upgrade").stdout.endswith(f"migrated to {HEAD_REVISION}\n")
    assert run(cfg, "db", "upgrade").stdout.endswith(f"already at {HEAD_REVISION}\n")


def test_unchanged_poll_writes_nothing_but_health(tmp_path):
    with io_server() as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        run(cfg, "poll")
        run(cfg, "poll")
        dbf = tmp_path / "m.db"
        before = db_rows(dbf, "select * from incidents"), db_rows(dbf, "select * from updates"), \
            db_rows(dbf, "select * from source_states")
        n = len(srv.requests)
        assert "unchanged" in run(cfg, "poll").stdout
        after = db_rows(dbf, "select * from incidents"), db_rows(dbf, "select * from updates"), \
            db_rows(dbf, "select * from source_states")
        assert before == after
        assert len(srv.requests) - n == 2            # the API list and the feed; no timeline re-fetched


def test_conditional_get_sends_validators(tmp_path, openai_history):
    with ReplayServer(StatuspagePage(openai_history)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        run(cfg, "poll")
        n = len(srv.requests)
        run(cfg, "poll")
        second = srv.requests[n:]
        assert second and all("if-none-match" in {k.lower() for k in r[2]} for r in second)
        ua = {v for r in second for k, v in r[2].items() if k.lower() == "user-agent"}
        assert len(ua) == 1 and next(iter(ua)).startswith("openai-status-monitor/")


def test_backfill_of_a_page_kind_without_history_is_a_note_not_a_failure(tmp_path, openai_history):
    """A Statuspage page offers nothing beyond its recent incidents: `backfill` says so and exits 0; a page
    that does fail still makes it exit 1."""
    with ReplayServer(StatuspagePage(openai_history)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        r = run(cfg, "backfill", ok=None)
        assert (r.exit_code, r.output) == (
            0, "openai: skipped: this page kind offers no history beyond its recent incidents\n")
        cfg = write_config(tmp_path, {"openai": srv.base_url, "broken": "http://127.0.0.1:9"})
        r = run(cfg, "backfill", ok=None)
        assert r.exit_code == 1, r.output
        lines = r.output.splitlines()
        assert lines[0] == "openai: skipped: this page kind offers no history beyond its recent incidents", lines
        assert lines[1].startswith("broken: failed (") and lines[2] == "Error: backfill failed for broken", lines
