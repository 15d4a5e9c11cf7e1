"""Tests of the replay server itself: if a shape breaks here, parser tests built on it lie."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from datetime import datetime, timedelta, timezone

import feedparser
import httpx
import pytest

from replay import (
    COMPONENT_API_FILES,
    COMPONENT_API_LOGIN,
    COMPONENT_CHATGPT_LOGIN,
    COMPONENT_FILE_UPLOADS,
    HISTORY_DIR,
    INCIDENT_CODEX_GITHUB,
    INCIDENT_FILE_EXPIRED,
    INCIDENT_FILE_PROCESSING,
    INCIDENTIO_COMPONENTS,
    Fault,
    IncidentIoPage,
    ReplayServer,
    StatuspagePage,
    _incident_from_row,
    incidentio_incidents,
    load_history,
    parse_service,
    parse_status_timestamp,
    synthetic_incidents,
)

UTC = timezone.utc
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


# One client for the module: httpx.get() builds a new SSL context per call (~30 ms).
CLIENT = httpx.Client(timeout=5)


@pytest.fixture(scope="module", autouse=True)
def _close_client():
    yield
    CLIENT.close()


def get(srv: ReplayServer, path: str, **kw) -> httpx.Response:
    return CLIENT.get(srv.url(path), **kw)


# --------------------------------------------------------------------------
# CSV loader
# --------------------------------------------------------------------------


def test_history_counts_match_csv_rows_per_file(tmp_path):
    files = sorted((HISTORY_DIR / "openai").glob("*.csv"))
    assert len(files) == 15
    total = 0
    for f in files:
        with f.open(newline="", encoding="utf-8") as fh:
            rows = sum(1 for _ in csv.DictReader(fh))
        d = tmp_path / f.stem
        d.mkdir()
        shutil.copy(f, d / f.name)
        assert len(load_history(directory=d)) == rows, f.name
        total += rows
    assert total == 365
    assert len(load_history("openai")) == 365
    assert len(load_history("anthropic")) == 141


def test_history_incident_fields(openai_history):
    by_id = {i.id: i for i in openai_history}
    assert len(by_id) == 365
    inc = by_id["qr0k0p729t5k"]
    assert inc.title == "Some Batch API Calls Are Failing"
    assert inc.impact == "minor"
    assert inc.components == [("api", "API")]
    assert [u.status for u in inc.updates] == ["identified", "monitoring", "resolved"]
    # "May 31, 2024 - 18:05 PDT" -> 2024-06-01T01:05Z
    assert inc.updates[-1].at == utc(2024, 6, 1, 1, 5)
    assert inc.updates[0].at == utc(2024, 5, 31, 5, 0)  # May 30, 22:00 PDT
    assert [u.id for u in inc.updates] == ["qr0k0p729t5k-0", "qr0k0p729t5k-1", "qr0k0p729t5k-2"]
    assert inc.resolved_at(utc(2030, 1, 1)) == utc(2024, 6, 1, 1, 5)
    assert by_id["65phm857w1q4"].components == []
    for i in openai_history:
        assert all(u.at.tzinfo is not None for u in i.updates)
        assert [u.at for u in i.updates] == sorted(u.at for u in i.updates)
        assert i.updates[-1].status in ("resolved", "postmortem")
        assert i.impact in ("none", "minor", "major", "critical", "maintenance")
    # openai_history is sorted oldest first
    assert openai_history[0].updates[0].at < openai_history[-1].updates[0].at


def test_history_since_until(openai_history):
    q2 = load_history("openai", since="2024-04-01", until=datetime(2024, 7, 1, tzinfo=UTC))
    assert q2 and all(utc(2024, 4, 1) <= i.updates[0].at < utc(2024, 7, 1) for i in q2)
    assert len(q2) == sum(1 for i in openai_history if utc(2024, 4, 1) <= i.updates[0].at < utc(2024, 7, 1))


def test_timestamp_forms():
    assert parse_status_timestamp("Posted 3 months ago. May 31, 2024 - 18:05 PDT") == utc(2024, 6, 1, 1, 5)
    assert parse_status_timestamp("Posted 4 years ago. Feb 11, 2021 - 14:00 PST") == utc(2021, 2, 11, 22, 0)
    # missing year: from "N units ago" relative to the scrape (2024-08-31)
    assert parse_status_timestamp("Posted 1 year ago. Mar 08 - 17:45 PST") == utc(2023, 3, 9, 1, 45)
    assert parse_status_timestamp("Posted 10 days ago. Aug 21 - 13:35 PDT") == utc(2024, 8, 21, 20, 35)
    # missing year with no hint: the previous update decides (Dec -> Jan rollover)
    assert parse_status_timestamp("Jan 02 - 01:00 PST", after=utc(2022, 12, 31, 20)) == utc(2023, 1, 2, 9, 0)
    # generic PT, 12-hour clock, UTC
    assert parse_status_timestamp("Jul 4, 2024 - 1:30 PM PT") == utc(2024, 7, 4, 20, 30)
    assert parse_status_timestamp("Jan 4, 2024 - 1:30 PM PT") == utc(2024, 1, 4, 21, 30)
    assert parse_status_timestamp("Jun 18, 2024 - 18:09 UTC") == utc(2024, 6, 18, 18, 9)


def test_service_and_update_carry_over():
    assert parse_service("This incident affected: API, ChatGPT, Labs, and Playground.") == [
        ("api", "API"), ("chatgpt", "ChatGPT"), ("labs", "Labs"), ("playground", "Playground")]
    assert parse_service("This incident affected: claude.ai and api.anthropic.com.") == [
        ("claude-ai", "claude.ai"), ("api-anthropic-com", "api.anthropic.com")]
    assert parse_service("") == []
    row = {"Incident_Title": "t", "Incident_Link": "https://status.openai.com/incidents/abcdefghijkl",
           "Incident_Impact": "impact-major", "Service": "", "Updates": json.dumps([
               {"Update_Title": "Resolved", "Update_Body": "r", "Update_Timestamp": "May 31, 2024 - 18:05 PDT"},
               {"Update_Title": "Update", "Update_Body": "u2", "Update_Timestamp": "May 31, 2024 - 17:05 PDT"},
               {"Update_Title": "Identified", "Update_Body": "i", "Update_Timestamp": "May 31, 2024 - 16:05 PDT"},
               {"Update_Title": "Update", "Update_Body": "u1", "Update_Timestamp": "May 31, 2024 - 15:05 PDT"}])}
    inc = _incident_from_row(row, "x.csv")
    assert [u.status for u in inc.updates] == ["investigating", "identified", "identified", "resolved"]
    assert [u.label for u in inc.updates] == ["Update", "Identified", "Update", "Resolved"]


# --------------------------------------------------------------------------
# Statuspage
# --------------------------------------------------------------------------


def test_statuspage_json_shapes_and_limits(replay):
    s = get(replay, "/api/v2/summary.json").json()
    assert s["page"]["time_zone"] == "Etc/UTC" and s["page"]["id"] == "jbxzcdv9xc4d"
    assert s["incidents"] == [] and s["scheduled_maintenances"] == []
    assert s["status"]["indicator"] == "none"
    assert {c["name"] for c in s["components"]} >= {"API", "ChatGPT"}
    assert all({"group", "group_id", "status"} <= c.keys() for c in s["components"])
    inc = get(replay, "/api/v2/incidents.json").json()["incidents"]
    assert len(inc) == 50
    created = [i["created_at"] for i in inc]
    assert created == sorted(created, reverse=True)
    first = inc[0]
    for key in ("id", "name", "status", "impact", "created_at", "updated_at", "monitoring_at", "resolved_at",
                "started_at", "shortlink", "page_id", "components", "incident_updates"):
        assert key in first
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["created_at"])
    ups = first["incident_updates"]
    assert [u["created_at"] for u in ups] == sorted((u["created_at"] for u in ups), reverse=True)
    assert {"id", "status", "body", "created_at", "display_at", "updated_at", "affected_components"} <= ups[0].keys()
    assert get(replay, "/api/v2/incidents/unresolved.json").json()["incidents"] == []
    assert len(get(replay, "/api/v2/components.json").json()["components"]) >= 2


def test_statuspage_time_travel(replay):
    replay.now = utc(2024, 5, 31, 6, 0)  # qr0k0p729t5k identified at 05:00Z, resolved 2024-06-01T01:05Z
    inc = get(replay, "/api/v2/incidents.json").json()["incidents"]
    assert inc[0]["id"] == "qr0k0p729t5k"
    assert inc[0]["status"] == "identified" and inc[0]["resolved_at"] is None
    assert len(inc[0]["incident_updates"]) == 1
    assert "65phm857w1q4" not in {i["id"] for i in inc}  # created later that day
    s = get(replay, "/api/v2/summary.json").json()
    assert [i["id"] for i in s["incidents"]] == ["qr0k0p729t5k"]
    assert {c["name"]: c["status"] for c in s["components"]}["API"] == "degraded_performance"
    assert s["status"]["indicator"] == "minor"
    unresolved = get(replay, "/api/v2/incidents/unresolved.json").json()["incidents"]
    assert [i["id"] for i in unresolved] == ["qr0k0p729t5k"]

    replay.now = utc(2024, 6, 1, 2, 0)
    inc = get(replay, "/api/v2/incidents.json").json()["incidents"]
    q = next(i for i in inc if i["id"] == "qr0k0p729t5k")
    assert q["status"] == "resolved" and q["resolved_at"] == "2024-06-01T01:05:00.000Z"
    assert q["monitoring_at"] == "2024-06-01T00:11:00.000Z"
    assert [u["status"] for u in q["incident_updates"]] == ["resolved", "monitoring", "identified"]
    assert inc[0]["id"] == "65phm857w1q4" or inc[0]["created_at"] > q["created_at"]


def test_statuspage_feeds(replay):
    replay.now = utc(2024, 6, 1, 2, 0)
    raw = get(replay, "/history.atom").text
    atom = feedparser.parse(raw)
    assert not atom.bozo, atom.get("bozo_exception")
    assert len(atom.entries) == 25
    e = next(e for e in atom.entries if e.link.endswith("/incidents/qr0k0p729t5k"))
    assert re.fullmatch(r"tag:status\.openai\.com,2005:Incident/\d+", e.id)
    assert e.link == "https://status.openai.com/incidents/qr0k0p729t5k"
    # raw Atlassian markup (feedparser's sanitizer drops the data-var attributes)
    assert ("<content type=\"html\">&lt;p&gt;&lt;small&gt;Jun &lt;var data-var='date'&gt; 1&lt;/var&gt;, "
            "&lt;var data-var='time'&gt;01:05&lt;/var&gt; UTC&lt;/small&gt;&lt;br&gt;&lt;strong&gt;Resolved"
            "&lt;/strong&gt; - This incident has been resolved.&lt;/p&gt;") in raw
    content = e.content[0].value
    assert content.startswith("<p><small>Jun <var> 1</var>, <var>01:05</var> UTC</small>")
    assert content.count("<p><small>") == 3 and "<strong>Identified</strong> - Batch API requests" in content
    assert e.published_parsed and e.updated_parsed
    rss = feedparser.parse(get(replay, "/history.rss").content)
    assert not rss.bozo
    assert len(rss.entries) == 25
    assert {x.id for x in rss.entries} == {x.link for x in atom.entries}
    # same ids across time: an entry's id does not move when it is updated
    replay.now = utc(2024, 5, 31, 6, 0)
    earlier = feedparser.parse(get(replay, "/history.atom").content)
    assert next(x for x in earlier.entries if x.link == e.link).id == e.id


def test_statuspage_conditional_get_and_gzip(replay):
    r1 = get(replay, "/api/v2/summary.json")
    assert r1.headers["content-encoding"] == "gzip" and r1.headers["etag"] and r1.headers["last-modified"]
    r2 = get(replay, "/api/v2/summary.json", headers={"If-None-Match": r1.headers["etag"]})
    assert r2.status_code == 304 and r2.content == b""
    r3 = get(replay, "/history.atom", headers={"If-Modified-Since": get(replay, "/history.atom").headers["last-modified"]})
    assert r3.status_code == 304
    replay.now = replay.now - timedelta(days=30)  # content changes: old validator no longer matches
    assert get(replay, "/api/v2/summary.json", headers={"If-None-Match": r1.headers["etag"]}).status_code == 200
    replay.gzip = False
    assert "content-encoding" not in get(replay, "/api/v2/summary.json").headers
    rec = replay.requests_for("/api/v2/summary.json")[1]
    assert rec.method == "GET" and rec.headers["if-none-match"] == r1.headers["etag"]
    assert rec.headers.get("If-None-Match") == r1.headers["etag"]


def test_unknown_path_is_html_404(replay):
    r = get(replay, "/nope/never")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert b"<html" in r.content


# --------------------------------------------------------------------------
# incident.io
# --------------------------------------------------------------------------


def test_incidentio_fixtures():
    incs = incidentio_incidents()
    assert all(ULID.match(i.id) for i in incs)
    assert len({i.id for i in incs}) == len(incs) == 5
    fe = next(i for i in incs if i.id == INCIDENT_FILE_EXPIRED)
    assert fe.updates[0].at.date().isoformat() == "2025-11-14" and "file has expired" in fe.title
    assert fe.components == [(COMPONENT_FILE_UPLOADS, "File uploads")]
    assert fe.updates[0].posted_at > fe.updates[0].at  # back-dated
    fp = next(i for i in incs if i.id == INCIDENT_FILE_PROCESSING)
    assert {c for c, _ in fp.components} == {COMPONENT_FILE_UPLOADS, COMPONENT_API_FILES}
    assert all(3 <= len(i.updates) <= 5 for i in incs)
    assert len(INCIDENTIO_COMPONENTS) >= 31
    logins = [(c, g) for c, n, g in INCIDENTIO_COMPONENTS if n == "Login"]
    assert logins == [(COMPONENT_API_LOGIN, "APIs"), (COMPONENT_CHATGPT_LOGIN, "ChatGPT")]
    assert {g for *_, g in INCIDENTIO_COMPONENTS} == {"APIs", "ChatGPT", "Codex", "Others"}
    assert all(ULID.match(c) for c, *_ in INCIDENTIO_COMPONENTS)
    exported = json.loads((HISTORY_DIR.parent / "incidentio" / "components.json").read_text())
    assert [(c["id"], c["name"], c["group"]) for c in exported] == INCIDENTIO_COMPONENTS


def test_incidentio_summary_and_components(incidentio_replay):
    srv = incidentio_replay
    s = get(srv, "/api/v2/summary.json").json()
    assert "time_zone" not in s["page"] and s["page"]["url"] == "https://status.openai.com/"
    assert "incidents" not in s and "scheduled_maintenances" not in s
    assert len(s["components"]) == 25
    srv.now = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
    s = get(srv, "/api/v2/summary.json").json()
    assert [i["id"] for i in s["incidents"]] == [INCIDENT_FILE_PROCESSING]
    assert s["status"]["indicator"] == "minor"
    seen = set()
    for _ in range(6):  # the 25 rotate: every component shows up eventually
        seen |= {c["id"] for c in get(srv, "/api/v2/summary.json").json()["components"]}
    assert seen == {c for c, *_ in INCIDENTIO_COMPONENTS}
    comps = get(srv, "/api/v2/components.json").json()["components"]
    assert len(comps) == len(INCIDENTIO_COMPONENTS)
    assert len({c["updated_at"] for c in comps}) == 1 and all("group_id" not in c for c in comps)
    st = {c["id"]: c["status"] for c in comps}
    assert st[COMPONENT_FILE_UPLOADS] == "partial_outage" and st[COMPONENT_API_FILES] == "degraded_performance"
    assert [c["name"] for c in comps].count("Login") == 2
    r = get(srv, "/api/v2/incidents/unresolved.json")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")


def test_incidentio_incidents_json_bodies(incidentio_replay):
    srv = incidentio_replay
    inc = get(srv, "/api/v2/incidents.json").json()["incidents"]
    assert [i["id"] for i in inc][0] == INCIDENT_FILE_PROCESSING
    assert all(i["impact"] in ("none", "minor") for i in inc)
    assert all(i.get("components", []) == [] for i in inc) and any("components" not in i for i in inc)
    assert all("shortlink" not in i for i in inc)
    assert all(u["body"] == "" for i in inc for u in i["incident_updates"])
    fe = next(i for i in inc if i["id"] == INCIDENT_FILE_EXPIRED)
    oldest = fe["incident_updates"][-1]
    assert oldest["display_at"] < oldest["created_at"]  # back-dated
    srv.page.api_bodies = "missing"
    inc = get(srv, "/api/v2/incidents.json").json()["incidents"]
    assert all("body" not in u for i in inc for u in i["incident_updates"])
    srv.page.api_bodies = "markdown"
    inc = get(srv, "/api/v2/incidents.json").json()["incidents"]
    codex = next(i for i in inc if i["id"] == INCIDENT_CODEX_GITHUB)
    bodies = " ".join(u["body"] for u in codex["incident_updates"])
    assert "[GitHub's status page](https://www.githubstatus.com/ \"GitHub's status page\")" in bodies
    assert "```" in bodies


def test_incidentio_feeds(incidentio_replay):
    srv = incidentio_replay
    for path in ("/feed.rss", "/feed.atom", "/history.rss", "/history.atom"):
        raw = get(srv, path).content
        f = feedparser.parse(raw)
        assert not f.bozo, (path, f.get("bozo_exception"))
        assert f.feed.generator == "incident.io"
        assert len(f.entries) == 5
        for e in f.entries:
            assert e.id.startswith("https://status.openai.com//incidents/") and ULID.match(e.id.rsplit("/", 1)[1])
        if path == "/history.atom":
            assert b"<published>" not in raw
    raw = get(srv, "/feed.rss").text
    assert ("<description><![CDATA[<b>Status: Resolved</b><br/><br/>This incident has been resolved. File uploads "
            "and file processing are operating normally.<br/><br/><b>Affected components</b><ul>"
            "<li>File uploads (Operational)</li><li>Files (Operational)</li></ul>]]></description>") in raw
    rss = feedparser.parse(raw)
    fp = next(e for e in rss.entries if e.id.endswith(INCIDENT_FILE_PROCESSING))
    assert fp.summary.startswith("<b>Status: Resolved</b><br /><br />This incident has been resolved.")
    assert fp.content[0].value == fp.summary
    assert fp.published_parsed[:6] == (2026, 3, 2, 15, 12, 7)  # pubDate = incident start
    fe = next(e for e in rss.entries if e.id.endswith(INCIDENT_FILE_EXPIRED))
    assert fe.published_parsed[:6] == (2025, 11, 14, 17, 5, 0)  # back-dated start

    # during the incident: same guid, latest update, component state now
    srv.now = datetime(2026, 3, 2, 15, 45, tzinfo=UTC)
    atom = feedparser.parse(get(srv, "/feed.atom").content)
    e = next(e for e in atom.entries if e.id.endswith(INCIDENT_FILE_PROCESSING))
    assert e.summary.startswith("<b>Status: Identified</b><br /><br />We have identified the issue")
    assert "<li>File uploads (Partial outage)</li><li>Files (Degraded performance)</li>" in e.summary
    assert e.updated_parsed[:6] == (2026, 3, 2, 15, 40, 45)
    # the component list can change while the incident does not
    srv.page.live_component_status = {COMPONENT_FILE_UPLOADS: "major_outage"}
    e2 = next(x for x in feedparser.parse(get(srv, "/feed.atom").content).entries if x.id == e.id)
    assert "<li>File uploads (Full outage)</li>" in e2.summary and e2.updated == e.updated


def test_incidentio_feed_bytes_change_items_do_not(incidentio_replay):
    a = get(incidentio_replay, "/feed.rss")
    b = get(incidentio_replay, "/feed.rss")
    assert a.content != b.content
    fa, fb = feedparser.parse(a.content), feedparser.parse(b.content)
    assert fa.feed.updated != fb.feed.updated
    key = lambda f: [(e.id, e.title, e.summary) for e in f.entries]  # noqa: E731
    assert key(fa) == key(fb)
    # validators are sent, but a 304 never comes from this page
    c = get(incidentio_replay, "/api/v2/summary.json")
    d = get(incidentio_replay, "/api/v2/components.json", headers={"If-None-Match": "*"})
    assert c.headers.get("etag") and d.status_code == 200
    a2 = get(incidentio_replay, "/history.atom")
    b2 = get(incidentio_replay, "/history.atom")
    assert a2.content != b2.content


def test_incidentio_limits():
    incs = synthetic_incidents(120, utc(2025, 6, 1), seed=3, ids="ulid")
    with ReplayServer(IncidentIoPage(incs)) as srv:
        assert len(get(srv, "/api/v2/incidents.json").json()["incidents"]) == 25
        assert len(feedparser.parse(get(srv, "/feed.rss").content).entries) == 50
        assert len(feedparser.parse(get(srv, "/feed.atom").content).entries) == 50
        assert len(feedparser.parse(get(srv, "/history.atom").content).entries) == 90
        assert len(feedparser.parse(get(srv, "/history.rss").content).entries) == 90
    with ReplayServer(StatuspagePage(synthetic_incidents(80, utc(2023, 1, 1), seed=4))) as srv:
        assert len(get(srv, "/api/v2/incidents.json").json()["incidents"]) == 50
        assert len(feedparser.parse(get(srv, "/history.rss").content).entries) == 25


def test_proxy(incidentio_replay):
    srv = incidentio_replay
    host = "status.openai.com"
    summ = get(srv, f"/proxy/{host}").json()["summary"]
    assert summ["ongoing_incidents"] == [] and summ["affected_components"] == []
    groups = {it["group"]["name"]: it["group"]["components"] for it in summ["structure"]["items"]}
    assert set(groups) == {"APIs", "ChatGPT", "Codex", "Others"}
    assert {"component_id": COMPONENT_FILE_UPLOADS, "name": "File uploads", "hidden": False} in groups["ChatGPT"]

    d = get(srv, f"/proxy/{host}/incidents/{INCIDENT_FILE_PROCESSING}").json()["incident"]
    assert d["status"] == "resolved"
    assert [u["to_status"] for u in d["updates"]] == ["resolved", "monitoring", "identified", "identified",
                                                       "investigating"]
    assert "[" not in d["updates"][1]["message_string"] and "Files API" in d["updates"][1]["message_string"]
    imp = {c["component_id"]: c for c in d["component_impacts"]}
    assert imp[COMPONENT_FILE_UPLOADS]["status"] == "partial_outage"
    assert imp[COMPONENT_API_FILES]["status"] == "degraded_performance"
    assert imp[COMPONENT_FILE_UPLOADS]["end_at"] == "2026-03-02T17:02:00Z"
    stamps = [u["published_at"] for u in d["updates"]]
    assert "2026-03-02T15:12:07Z" in stamps and "2026-03-02T16:03:12.76Z" in stamps
    assert "2026-03-02T16:25:51.482Z" in stamps
    assert get(srv, "/proxy/statuspage.incident.io/incidents/01AAAAAAAAAAAAAAAAAAAAAAAA").status_code == 404

    win = get(srv, f"/proxy/{host}/incidents", params={"start_at": "2026-01-01T00:00:00Z",
                                                        "end_at": "2026-03-01T00:00:00.000Z"}).json()["incidents"]
    assert [i["id"] for i in win] == [INCIDENT_CODEX_GITHUB, win[1]["id"], win[2]["id"]] and len(win) == 3
    assert INCIDENT_FILE_PROCESSING not in {i["id"] for i in win}
    for key in ("id", "name", "status", "published_at", "affected_components", "current_worst_impact",
                "last_update_at"):
        assert key in win[0]
    too_wide = get(srv, f"/proxy/{host}/incidents", params={"start_at": "2025-01-01T00:00:00Z",
                                                             "end_at": "2026-01-01T00:00:00Z"})
    assert too_wide.status_code == 400
    assert get(srv, f"/proxy/{host}/incidents").status_code == 400

    srv.now = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
    summ = get(srv, f"/proxy/{host}").json()["summary"]
    assert [i["id"] for i in summ["ongoing_incidents"]] == [INCIDENT_FILE_PROCESSING]
    assert {"component_id": COMPONENT_FILE_UPLOADS, "status": "partial_outage"} in summ["affected_components"]
    d = get(srv, f"/proxy/{host}/incidents/{INCIDENT_FILE_PROCESSING}").json()["incident"]
    assert [u["to_status"] for u in d["updates"]] == ["investigating"] and d["component_impacts"][0]["end_at"] is None
    srv.now = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # not yet published
    assert get(srv, f"/proxy/{host}/incidents/{INCIDENT_FILE_PROCESSING}").status_code == 404


def test_incidentio_time_travel_hides_incidents(incidentio_replay):
    srv = incidentio_replay
    srv.now = datetime(2025, 11, 14, 17, 20, tzinfo=UTC)  # back-dated update (17:05) not yet posted (17:32)
    assert get(srv, "/api/v2/incidents.json").json()["incidents"] == []
    srv.now = datetime(2025, 11, 14, 17, 40, tzinfo=UTC)
    inc = get(srv, "/api/v2/incidents.json").json()["incidents"]
    assert [i["id"] for i in inc] == [INCIDENT_FILE_EXPIRED] and inc[0]["status"] == "investigating"
    item = feedparser.parse(get(srv, "/feed.rss").content).entries
    assert len(item) == 1 and "(Partial outage)" in item[0].summary


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------


def test_fault_statuses_and_repeat(replay):
    for status in (500, 502, 503):
        replay.faults["/api/v2/summary.json"] = Fault.error(status, repeat=1)
        assert get(replay, "/api/v2/summary.json").status_code == status
        assert get(replay, "/api/v2/summary.json").status_code == 200  # repeat exhausted
    replay.faults["/api/v2/summary.json"] = Fault(status=503, headers={"Retry-After": "5"}, repeat=2)
    assert [get(replay, "/api/v2/summary.json").status_code for _ in range(3)] == [503, 503, 200]
    replay.faults["/api/v2/*"] = Fault.rate_limited(retry_after=90)
    r = get(replay, "/api/v2/incidents.json")
    assert r.status_code == 429 and r.headers["retry-after"] == "90"
    assert get(replay, "/history.atom").status_code == 200
    replay.faults.clear()
    replay.faults["/history.atom"] = lambda h: (h.emit(418, {"Content-Type": "text/plain"}, body=b"teapot"), True)[1]
    assert get(replay, "/history.atom").status_code == 418
    replay.faults["/history.atom"] = lambda h: False  # declines: normal response
    assert get(replay, "/history.atom").status_code == 200


def test_fault_hang_and_delay(replay):
    replay.faults["/api/v2/summary.json"] = Fault.never_answer()
    t = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        get(replay, "/api/v2/summary.json", timeout=0.3)
    assert time.monotonic() - t < 2
    replay.faults["/api/v2/summary.json"] = Fault.slow(0.3)
    t = time.monotonic()
    assert get(replay, "/api/v2/summary.json").json()["page"]["name"] == "OpenAI"
    assert time.monotonic() - t >= 0.3


def test_fault_bodies(replay):
    replay.gzip = False
    replay.faults["/history.atom"] = Fault.truncated(0.5)
    with pytest.raises(httpx.RemoteProtocolError):
        get(replay, "/history.atom")
    replay.faults["/api/v2/summary.json"] = Fault.empty()
    r = get(replay, "/api/v2/summary.json")
    assert r.status_code == 200 and r.content == b""
    replay.faults["/api/v2/summary.json"] = Fault.html_page()
    r = get(replay, "/api/v2/summary.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    with pytest.raises(ValueError):
        r.json()
    replay.faults["/api/v2/summary.json"] = Fault.invalid_utf8()
    with pytest.raises(UnicodeDecodeError):
        get(replay, "/api/v2/summary.json").content.decode("utf-8")
    replay.faults["/api/v2/summary.json"] = Fault.redirect_loop()
    with pytest.raises(httpx.TooManyRedirects):
        CLIENT.get(replay.url("/api/v2/summary.json"), follow_redirects=True)
    replay.faults["/history.rss"] = Fault(body=b"<rss>" + b" " * 2000 + b"</rss>", trickle=8000)
    t = time.monotonic()
    r = get(replay, "/history.rss")
    assert r.status_code == 200 and len(r.content) == 2011 and time.monotonic() - t >= 0.2
    # the real body at 2000 bytes/s: a per-read timeout never fires, only a total deadline helps
    replay.faults["/history.rss"] = Fault(trickle=2000, repeat=1)
    got, t = 0, time.monotonic()
    with CLIENT.stream("GET", replay.url("/history.rss"), timeout=0.5) as r:
        declared = int(r.headers["content-length"])
        for chunk in r.iter_raw():
            got += len(chunk)
            if time.monotonic() - t > 0.6:
                break
    assert 200 < got < 3000 < declared


def test_fault_huge_and_gzip_bomb(replay):
    replay.faults["/api/v2/incidents.json"] = Fault.huge()
    with CLIENT.stream("GET", replay.url("/api/v2/incidents.json")) as r:
        assert int(r.headers["content-length"]) == 50 * 1024 * 1024
        got = 0
        for chunk in r.iter_raw():
            got += len(chunk)
            if got > 2_000_000:
                break
    assert got > 2_000_000
    replay.faults["/api/v2/incidents.json"] = Fault.gzip_bomb(64 << 20)
    with CLIENT.stream("GET", replay.url("/api/v2/incidents.json")) as r:
        assert r.headers["content-encoding"] == "gzip" and int(r.headers["content-length"]) < 200_000
        out = 0
        for chunk in r.iter_bytes():
            out += len(chunk)
            if out > 10_000_000:
                break
    assert out > 10_000_000


def test_server_stops_with_hanging_client():
    with ReplayServer(IncidentIoPage(incidentio_incidents())) as srv:
        srv.faults["*"] = Fault.never_answer()
        with pytest.raises(httpx.ReadTimeout):
            get(srv, "/feed.rss", timeout=0.2)
        assert srv.requests[-1].path == "/feed.rss"
    t = time.monotonic()
    srv.stop()
    assert time.monotonic() - t < 5         # a hanging client does not keep the server up


def test_synthetic_incidents_deterministic():
    big = synthetic_incidents(20_000, utc(2020, 1, 1))
    assert len(big) == 20_000 and len({i.id for i in big}) == 20_000
    assert all(2 <= len(i.updates) <= 5 for i in big)
    small = synthetic_incidents(50, utc(2020, 1, 1))
    assert [(i.id, i.title) for i in small] == [(i.id, i.title) for i in big[:50]]
    ul = synthetic_incidents(10, utc(2025, 1, 1), ids="ulid")
    assert all(ULID.match(i.id) for i in ul)
