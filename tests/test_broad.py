"""Broad outages end to end: the real 2024 history of status.openai.com replayed on loopback, each answer from
a real `monitor` process. While ChatGPT or the API is broadly down, `status` says wait (uploads fail too);
narrow incidents never make it wait; a default notifier hears each step of a broad outage once."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from helpers import db_rows, run, write_config
from notify_servers import HTTPServer
from replay import ReplayIncident, ReplayServer, ReplayUpdate, StatuspagePage

CHATGPT_OUTAGE = "ff32y1r5px5r"        # 2024-07-17 "ChatGPT outage" (major)
CHATGPT_ERRORS = "2b9lxxhh957b"        # 2024-07-17 "Elevated error rates for ChatGPT" (major)
ASSISTANTS = "b0z4bgvlh8z0"            # 2024-07-12 "Outage on ChatGPT and Assistants API" (critical)
BOTH = "s9d5cv5jcy7x"                  # 2024-08-16 "Elevated error rates for ChatGPT and Platform API" (major)
NARROW = "rq519d4v09bw"                # 2024-07-26 "Increased latency and error rates affecting GPT-4o mini" (major)


def by_id(history, iid: str):
    return next(i for i in history if i.id == iid)


def status(cfg, *args):
    r = run(cfg, "status", *args, ok=None)
    return r.exit_code, r.stdout


def status_json(cfg, *args):
    code, out = status(cfg, "--json", *args)
    return code, json.loads(out)


@pytest.mark.parametrize("iid, code, reason, surfaces", [
    (CHATGPT_OUTAGE, 2, "ChatGPT is down: 'ChatGPT outage' (major); uploads fail too", ["chatgpt"]),
    (ASSISTANTS, 2, "ChatGPT is down: 'Outage on ChatGPT and Assistants API' (critical); uploads fail too",
     ["chatgpt"]),
    (BOTH, 2, "ChatGPT and the API are down: 'Elevated error rates for ChatGPT and Platform API' (major); "
              "uploads fail too", ["api", "chatgpt"]),
])
def test_broad_outage_waits_while_open(tmp_path, openai_history, iid, code, reason, surfaces):
    inc = by_id(openai_history, iid)
    with ReplayServer(StatuspagePage(openai_history), now=inc.updates[0].at + timedelta(minutes=10)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        got, data = status_json(cfg)
        assert (got, data["verdict"], data["reason"]) == (code, "wait", reason)
        (i,) = data["incidents"]
        assert (i["id"], i["surfaces"], i["broad"], i["upload"], i["tags"]) == (iid, surfaces, surfaces, False, [])
        text = run(cfg, "status", ok=None).stdout.splitlines()
        assert text[0] == f"WAIT: {reason}"
        assert f"    {reason.split(':')[0]}: OpenAI's side, not a local problem" in text
        srv.now = inc.updates[-1].at + timedelta(minutes=1)     # resolved
        run(cfg, "poll")
        assert status(cfg)[0] == 0


def test_surface_flag_answers_for_one_surface(tmp_path, openai_history):
    inc = by_id(openai_history, CHATGPT_OUTAGE)
    with ReplayServer(StatuspagePage(openai_history), now=inc.updates[0].at + timedelta(minutes=10)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        assert status(cfg, "--surface", "chatgpt")[0] == 2
        code, data = status_json(cfg, "--surface", "api")
        assert (code, data["verdict"], data["surface"], data["incidents"]) == (0, "troubleshoot-locally", "api", [])
        assert data["reason"] == "no upload-related incident and no broad outage of the API is open"
        code, out = status(cfg, "--surface", "nonesuch")
        assert (code, out) == (3, "UNKNOWN: unknown surface 'nonesuch' (known: chatgpt, api)\n")


def test_a_page_that_watches_only_the_api_ignores_a_chatgpt_outage(tmp_path, openai_history):
    inc = by_id(openai_history, CHATGPT_OUTAGE)
    with ReplayServer(StatuspagePage(openai_history), now=inc.updates[0].at + timedelta(minutes=10)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        cfg.write_text(cfg.read_text().replace('name = "openai"', 'name = "openai"\nsurfaces = ["api"]', 1))
        code, data = status_json(cfg)
        assert (code, data["verdict"], data["incidents"]) == (0, "troubleshoot-locally", [])


def test_narrow_incident_never_waits(tmp_path, openai_history):
    inc = by_id(openai_history, NARROW)
    with ReplayServer(StatuspagePage(openai_history), now=inc.updates[0].at + timedelta(minutes=10)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        code, data = status_json(cfg)
        assert (code, data["verdict"], data["incidents"]) == (0, "troubleshoot-locally", [])
        rows = db_rows(tmp_path / "m.db", "select status from incidents where page_incident_id = ?", NARROW)
        assert rows == [("investigating",)] or rows == [("identified",)]    # open on the page, and stored


def test_default_notifier_hears_each_step_of_a_broad_outage_once(tmp_path, openai_history):
    """2024-07-17: two ChatGPT outages and whatever else was posted that day; a json:// notifier with the
    default tags gets one message per step of each broad outage, none for anything else, none twice."""
    first, second = by_id(openai_history, CHATGPT_OUTAGE), by_id(openai_history, CHATGPT_ERRORS)
    start, end = first.updates[0].at - timedelta(hours=1), second.updates[-1].at + timedelta(hours=1)
    steps = sorted({u.at for i in openai_history for u in i.updates if start <= u.at <= end})
    with ReplayServer(StatuspagePage(openai_history), now=start) as srv, HTTPServer() as web:
        cfg = write_config(tmp_path, {"openai": srv.base_url},
                           extra=f'[[notifiers]]\nname = "hook"\nurl = "{web.url()}"\n')
        run(cfg, "poll")
        assert web.requests == []
        for t in steps + [steps[-1]]:              # the last moment twice: nothing new, nothing sent
            srv.now = t + timedelta(seconds=30)
            run(cfg, "poll")
        bodies = [r.json() for r in web.requests]
    titles = [b["title"] for b in bodies]
    expected = (["Wait: ChatGPT outage"] + ["Wait: ChatGPT outage"] * (len(first.updates) - 2)
                + ["Resolved: ChatGPT outage"]
                + ["Wait: Elevated error rates for ChatGPT"] * (len(second.updates) - 1)
                + ["Resolved: Elevated error rates for ChatGPT"])
    assert titles == expected
    assert "OpenAI reports that ChatGPT is down. File uploads fail too: this is OpenAI's side, not a local " \
           "problem." in bodies[0]["message"]


def maintenance(statuses: list[str], start) -> ReplayIncident:
    words = {"scheduled": "Scheduled maintenance of ChatGPT conversations from 14:00 to 16:00 UTC.",
             "in_progress": "The maintenance is under way.", "verifying": "Verifying.",
             "completed": "The maintenance is complete."}
    ups = [ReplayUpdate(status=s, body=words[s], at=start + timedelta(minutes=30 * n), id=f"mnt-{n}")
           for n, s in enumerate(statuses)]
    return ReplayIncident(id="mnt000000001", title="Scheduled maintenance for ChatGPT", impact="maintenance",
                          components=[("conv", "Conversations")], updates=ups)


def test_maintenance_scheduled_is_shown_in_progress_waits_completed_ends(tmp_path, openai_history):
    start = by_id(openai_history, NARROW).updates[-1].at + timedelta(days=1)    # a quiet day
    inc = maintenance(["scheduled", "in_progress", "verifying", "completed"], start)
    quiet = [i for i in openai_history if i.updates[-1].at < start - timedelta(hours=6)]
    with ReplayServer(StatuspagePage(quiet + [inc]), now=start + timedelta(minutes=1)) as srv, HTTPServer() as web:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0,
                           extra=f'[[notifiers]]\nname = "hook"\nurl = "{web.url()}"\n')
        run(cfg, "poll")
        code, data = status_json(cfg)                   # scheduled: shown, no reason to wait
        assert (code, data["verdict"], data["incidents"]) == (0, "troubleshoot-locally", [])
        assert [(s["id"], s["status"]) for s in data["scheduled"]] == [("mnt000000001", "scheduled")]
        assert "Scheduled maintenance (no reason to wait yet): Scheduled maintenance for ChatGPT (page openai)" \
            in status(cfg)[1]
        assert web.requests == []
        srv.now = start + timedelta(minutes=31)          # in progress on ChatGPT's core component
        run(cfg, "poll")
        code, data = status_json(cfg)
        assert (code, data["verdict"]) == (1, "wait")
        assert data["reason"] == ("ChatGPT is under maintenance: 'Scheduled maintenance for ChatGPT'; "
                                  "uploads fail too")
        srv.now = start + timedelta(minutes=91)          # completed
        run(cfg, "poll")
        assert status(cfg)[0] == 0
        titles = [r.json()["title"] for r in web.requests]
    assert titles == ["Wait: Scheduled maintenance for ChatGPT", "Resolved: Scheduled maintenance for ChatGPT"]
    stored = db_rows(tmp_path / "m.db", "select status, impact from incidents where page_incident_id = 'mnt000000001'")
    assert stored == [("resolved", "maintenance")]


def test_an_unknown_status_word_is_never_investigating(tmp_path, openai_history):
    start = by_id(openai_history, NARROW).updates[-1].at + timedelta(days=1)
    inc = ReplayIncident(id="odd000000001", title="Elevated error rates for ChatGPT", impact="major",
                         components=[], updates=[ReplayUpdate(status="pondering", body="Hmm.", at=start, id="o-1")])
    quiet = [i for i in openai_history if i.updates[-1].at < start - timedelta(hours=6)]
    with ReplayServer(StatuspagePage(quiet + [inc]), now=start + timedelta(minutes=1)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0)
        run(cfg, "poll")
        assert status(cfg)[0] == 0
    assert db_rows(tmp_path / "m.db", "select status from incidents where page_incident_id = 'odd000000001'") \
        == [("unknown",)]


def test_metrics_count_open_broad_outages_per_surface(tmp_path, openai_history):
    """/metrics' monitor_broad_outages_open{surface}, read by the service's own collector from the store while
    the 2024-08-16 outage of ChatGPT and the API is open."""
    from monitor import config
    from monitor.db import make_engine
    from monitor.web.metrics import PollCounts, StoreCollector

    inc = by_id(openai_history, BOTH)
    with ReplayServer(StatuspagePage(openai_history), now=inc.updates[0].at + timedelta(minutes=10)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        run(cfg, "poll")
        settings = config.load(cfg)
        engine = make_engine(settings.database_url())
        try:
            families = list(StoreCollector(settings, engine, PollCounts()).collect())
        finally:
            engine.dispose()
    (broad,) = [f for f in families if f.name == "monitor_broad_outages_open"]
    assert {s.labels["surface"]: s.value for s in broad.samples} == {"chatgpt": 1, "api": 1}
    (uploads,) = [f for f in families if f.name == "monitor_upload_incidents_open"]
    assert uploads.samples[0].value == 0


def test_a_maintenance_with_a_planned_end_reads_whole():
    """The planned end's "14:00" is part of the state, not where the title begins."""
    from monitor.verdict import broad_state, broad_words

    i = {"broad": ["api"], "title": "Database upgrade", "impact": "maintenance", "status": "in_progress",
         "scheduled_until": "2026-03-02T14:00:00Z"}
    assert broad_state(i) == "The API is under maintenance until 14:00 UTC"
    assert broad_words(i) == "The API is under maintenance until 14:00 UTC: 'Database upgrade'"
    assert broad_state({"broad": ["chatgpt", "api"], "impact": "major"}) == "ChatGPT and the API are down"
