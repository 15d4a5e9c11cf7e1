"""`monitor status`: the real CLI on real SQLite files, against the replay server at moments when upload
incidents are open or resolved. Exit codes follow the monitoring-plugins convention; stale data never reads
as all-clear."""
from __future__ import annotations

import json
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from helpers import db_rows, run, write_config
from replay import (INCIDENT_FILE_PROCESSING, Fault, IncidentIoPage, ReplayServer, StatuspagePage,
                    incidentio_incidents)

from monitor.verdict import CHECKLIST

UTC = timezone.utc
MINOR = "vn8j63zg56hz"      # 2024-05-08 "Elevated errors uploading files in ChatGPT", impact minor
MAJOR = "433mh2zvfmww"      # 2024-08-19 "File uploads returning error messages", impact major
QUIET = "2024-05-08T00:00:00Z"          # no upload-related incident open
MINOR_OPEN = "2024-05-08T00:45:00Z"
MAJOR_OPEN = "2024-08-19T19:00:00Z"
MAJOR_OVER = "2024-08-20T00:00:00Z"

CHECKLIST_LINES = ["Local checklist:"] + [f"  {n}. {item}" for n, item in enumerate(CHECKLIST, 1)]


@pytest.fixture
def sp(openai_history):
    with ReplayServer(StatuspagePage(openai_history), now=QUIET) as srv:
        yield srv


def status(cfg: Path, *args: str):
    return run(cfg, "status", *args, ok=None)


def status_json(cfg: Path):
    r = status(cfg, "--json")
    data = json.loads(r.stdout)
    assert data["exit_code"] == r.exit_code
    return r.exit_code, data


def page_row(db: Path, name: str = "openai"):
    (row,) = db_rows(db, "select last_success_at, last_outcome, consecutive_failures from pages where name = ?",
                     name)
    return row


def age_data(db: Path, seconds: float, name: str = "openai") -> datetime:
    """Make the last good poll `seconds` old (as if the service had stopped polling then)."""
    t = datetime.now(UTC) - timedelta(seconds=seconds)
    con = sqlite3.connect(db)
    with con:
        con.execute("update pages set last_success_at = ?, not_before = null where name = ?",
                    (t.strftime("%Y-%m-%d %H:%M:%S.%f"), name))
    con.close()
    return t


def source_line(db: Path, fresh: str = "fresh", name: str = "openai") -> str:
    """The exact `Source` line expected for a page whose last poll succeeded, as a regex (the age varies)."""
    last, outcome, _ = page_row(db, name)
    return (rf"Source {name}: {fresh}, last good poll {re.escape(last[:19])} UTC \((0|1) s ago\); "
            rf"last poll: {re.escape(outcome)}")


# ------------------------------------------------------------------------------------------ verdicts


def test_nothing_open_exit_0_with_checklist_answered_from_the_store(tmp_path, sp):
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    run(cfg, "poll")
    sp.clear_requests()
    r = status(cfg)
    assert r.exit_code == 0, r.output
    assert sp.requests == []                      # fresh data: no poll
    lines = r.stdout.splitlines()
    assert lines[0] == "TROUBLESHOOT LOCALLY: no upload-related incident and no broad outage is open"
    assert re.fullmatch(source_line(tmp_path / "m.db"), lines[1]), lines[1]
    assert lines[2:] == CHECKLIST_LINES


def test_minor_incident_open_exit_1_then_resolved_exit_0(tmp_path, sp):
    sp.now = MINOR_OPEN
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    run(cfg, "poll")
    r = status(cfg)
    assert r.exit_code == 1, r.output
    assert r.stdout.splitlines()[:5] == [
        "WAIT: 1 upload-related incident open (worst impact: minor)",
        # the replayed incident began in 2024: by the monitor's clock it has lasted longer than any before it
        "No estimate: no comparable incident lasted this long.",
        "  - Elevated errors uploading files in ChatGPT",
        "    investigating, impact minor, since 2024-05-08 00:39 UTC",
        f"    {sp.base_url}/incidents/{MINOR}",
    ]
    assert re.fullmatch(source_line(tmp_path / "m.db"), r.stdout.splitlines()[5])
    assert len(r.stdout.splitlines()) == 6       # no checklist while waiting
    sp.now = "2024-05-08T17:00:00Z"               # resolved at 16:37
    run(cfg, "poll")
    r = status(cfg)
    assert r.exit_code == 0 and r.stdout.startswith("TROUBLESHOOT LOCALLY: "), r.output


def test_major_incident_open_exit_2_then_resolved_exit_0(tmp_path, sp):
    sp.now = MAJOR_OPEN
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    r = status(cfg)                               # never polled: polls first
    assert r.exit_code == 2, r.output
    assert r.stdout.splitlines()[:4] == [
        "WAIT: 1 upload-related incident open (worst impact: major)",
        "No estimate: no comparable incident lasted this long.",
        "  - File uploads returning error messages",
        "    investigating, impact major, since 2024-08-19 18:51 UTC",
    ]
    sp.now = MAJOR_OVER
    run(cfg, "poll")
    assert status(cfg).exit_code == 0


def test_incidentio_file_processing_incident_json(tmp_path):
    """incident.io (today's status.openai.com): the 2026-03-02 incident while open, and the JSON contract."""
    inc = next(i for i in incidentio_incidents() if i.id == INCIDENT_FILE_PROCESSING)
    with ReplayServer(IncidentIoPage(incidentio_incidents()), now=inc.updates[1].posted + timedelta(minutes=1)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0)
        run(cfg, "poll")
        code, data = status_json(cfg)
        last, _, _ = page_row(tmp_path / "m.db")
        srv.now = inc.updates[-1].posted + timedelta(minutes=1)
        run(cfg, "poll")
        code_after, after = status_json(cfg)
    assert code == 2
    assert set(data) == {"verdict", "exit_code", "reason", "incidents", "checked_at", "pages", "checklist", "leader",
                         "scheduled", "surface"}
    assert data["verdict"] == "wait" and data["reason"] == "1 upload-related incident open (worst impact: major)"
    assert data["checklist"] == []
    (i,) = data["incidents"]
    assert {k: i[k] for k in ("page", "id", "title", "status", "impact", "started_at", "resolved_at")} == {
        "page": "openai", "id": INCIDENT_FILE_PROCESSING,
        "title": "Elevated errors affecting file uploads and file processing", "status": "identified",
        "impact": "major", "started_at": "2026-03-02T15:12:07Z", "resolved_at": None}
    assert "file-upload" in i["tags"] and i["url"].endswith(f"/incidents/{INCIDENT_FILE_PROCESSING}")
    assert data["checked_at"].endswith("Z") and data["checked_at"][:19] == last[:19].replace(" ", "T")
    (p,) = data["pages"]
    assert p["name"] == "openai" and p["fresh"] is True and p["consecutive_failures"] == 0
    assert p["polled_now"] is False and p["skipped"] is None
    assert code_after == 0 and after["verdict"] == "troubleshoot-locally" and after["incidents"] == []
    assert after["checklist"] == list(CHECKLIST)


# ------------------------------------------------------------------------------------------ freshness


def test_stale_data_and_page_reachable_polls_once_first(tmp_path, sp):
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    run(cfg, "poll")                               # quiet
    age_data(tmp_path / "m.db", 3600)
    sp.now = MAJOR_OPEN                            # meanwhile an upload incident opened
    sp.clear_requests()
    r = status(cfg)
    assert sp.requests                             # it polled
    assert r.exit_code == 2, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "WAIT: 1 upload-related incident open (worst impact: major)"
    assert re.fullmatch(source_line(tmp_path / "m.db"), lines[-1]), lines[-1]


@pytest.mark.parametrize("how", ["server stopped", "HTTP 500"])
def test_stale_data_and_page_unreachable_is_unknown_never_all_clear(tmp_path, sp, how):
    """Last known: nothing open. The data is an hour old and the page is down: UNKNOWN (3), not 0."""
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    run(cfg, "poll")
    good = age_data(tmp_path / "m.db", 3600)
    if how == "server stopped":
        sp.stop()
    else:
        sp.faults["/*"] = Fault.error(500)
    r = status(cfg)
    assert r.exit_code == 3, r.output
    _, outcome, fails = page_row(tmp_path / "m.db")
    assert fails == 1 and outcome.startswith("failed: ")
    lines = r.stdout.splitlines()
    assert lines == [
        f"UNKNOWN: no fresh data: openai last answered 1 h ago, 1 failed poll in a row ({outcome})",
        f"Source openai: STALE, last good poll {good:%Y-%m-%d %H:%M:%S} UTC (1 h ago); "
        f"FAILING: 1 poll in a row failed, last: {outcome}",
    ]
    if how == "HTTP 500":
        assert "HTTP 500" in outcome
    code, data = status_json(cfg)               # a second try fails again
    assert code == 3 and data["verdict"] == "unknown" and data["checklist"] == []
    assert data["pages"][0]["consecutive_failures"] == 2 and data["pages"][0]["fresh"] is False
    assert data["checked_at"][:19] == good.strftime("%Y-%m-%dT%H:%M:%S")


def test_stale_open_incident_and_page_unreachable_is_unknown_but_listed(tmp_path, sp):
    sp.now = MINOR_OPEN
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    run(cfg, "poll")
    age_data(tmp_path / "m.db", 7200)
    sp.stop()
    r = status(cfg)
    assert r.exit_code == 3, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("UNKNOWN: no fresh data: openai last answered 2 h ago, 1 failed poll in a row")
    assert lines[1:3] == ["  - Elevated errors uploading files in ChatGPT",
                          "    investigating, impact minor, since 2024-05-08 00:39 UTC (page openai, no fresh data)"]


def test_never_polled_and_unreachable_is_unknown(tmp_path, sp):
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    sp.stop()
    code, data = status_json(cfg)
    assert code == 3 and data["verdict"] == "unknown" and data["checked_at"] is None
    assert data["reason"].startswith("no fresh data: openai has never been polled successfully, 1 failed poll")
    assert data["pages"][0]["polled_now"] is True


def test_backoff_shows_why_the_page_was_not_polled(tmp_path, sp):
    """A page that asked us to wait (Retry-After) is not polled, and the output says so."""
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    run(cfg, "poll")
    age_data(tmp_path / "m.db", 600)
    sp.faults["/*"] = Fault.rate_limited(retry_after=3600)
    assert status(cfg).exit_code == 3
    sp.faults.clear()
    sp.clear_requests()
    r = status(cfg)
    assert r.exit_code == 3 and sp.requests == []
    assert re.search(r"; not polled now: the page asked us to wait until \d\d:\d\d:\d\d UTC$", r.stdout.splitlines()[-1])


# ------------------------------------------------------------------------------------------ health


def test_failing_source_with_fresh_data_shows_plainly(tmp_path, sp):
    """A failing source is shown while the page still answers; once whole polls fail, no all-clear."""
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    run(cfg, "poll")
    sp.faults["/history.atom"] = Fault.error(502)
    sp.faults["/history.rss"] = Fault.error(502)
    run(cfg, "poll")
    r = status(cfg)
    assert r.exit_code == 0
    assert re.search(r"^Source openai: fresh, .*; last poll: ok \(\d source\(s\)\), unchanged, warnings: HTTP 502 from ",
                     r.stdout, re.M), r.stdout
    sp.faults["/*"] = Fault.error(500)
    run(cfg, "poll", ok=False)
    run(cfg, "poll", ok=False)
    r = status(cfg)
    assert r.exit_code == 3, r.stdout                # failed polls since the last good one: no all-clear
    assert re.search(r"^Source openai: .*FAILING: 2 polls in a row failed, "
                     r"last: failed: HTTP 500 from ", r.stdout, re.M), r.stdout


def test_two_pages_one_down(tmp_path, openai_history):
    """An incident on a fresh page is an answer (wait) even while another page is down; without one, the
    page that is down makes it unknown."""
    with ReplayServer(StatuspagePage(openai_history), now=MAJOR_OPEN) as a, \
            ReplayServer(StatuspagePage(openai_history), now=QUIET) as b:
        cfg = write_config(tmp_path, {"openai": a.base_url, "mirror": b.base_url})
        run(cfg, "poll")
        age_data(tmp_path / "m.db", 3600, "mirror")
        b.stop()
        r = status(cfg)
        assert r.exit_code == 2, r.output
        assert r.stdout.splitlines()[0].startswith(
            "WAIT: 1 upload-related incident open (worst impact: major); no fresh data: mirror last answered 1 h ago")
        a.now = MAJOR_OVER
        run(cfg, "poll", "--page", "openai")
        r = status(cfg)
        assert r.exit_code == 3 and r.stdout.startswith("UNKNOWN: no fresh data: mirror"), r.output


def test_errors_are_unknown_not_warning(tmp_path):
    """A broken config or an unusable store is exit 3 (UNKNOWN), which no monitoring system reads as 'an
    incident is open' (exit 1 would)."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[[pages]]\nname = 'x'\n")
    r = status(bad)
    assert r.exit_code == 3 and r.stdout.startswith(f"UNKNOWN: {bad}: pages[0].base_url: "), r.output
    cfg = tmp_path / "c.toml"
    cfg.write_text('[database]\nurl = "sqlite:////proc/no/such/dir/m.db"\n')
    code, data = status_json(cfg)
    assert code == 3 and data["verdict"] == "unknown" and data["incidents"] == []
    assert "cannot open the store /proc/no/such/dir/m.db: No such file or directory" in data["reason"]
