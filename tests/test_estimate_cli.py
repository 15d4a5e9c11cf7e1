"""How long to wait, through the real CLI and a replayed page: the same incident open 10 minutes and open 3 hours
gets its own `expected_resolution` from a small history whose quantiles are worked out by hand below, in
`status --json`, the `status` text, the message a notifier gets, the page report and `diagnose`."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from helpers import run, write_config
from notify_servers import HTTPServer
from replay import ReplayIncident, ReplayServer, ReplayUpdate, StatuspagePage

TITLE = "Elevated error rates for ChatGPT"
H = timedelta(hours=1)
# 20 resolved major ChatGPT incidents: ten of 30 min, ten of 4, 5, ..., 13 h.
DURATIONS = [timedelta(minutes=30)] * 10 + [h * H for h in range(4, 14)]
# Quantile of n survivors = the k-th smallest remaining time, k = ceil(q (n + 1)), capped at n; and
# median_at = now + (duration_k - elapsed) = start + duration_k.
# Open 10 min: all 20 survive. Durations sorted: 30 min x 10, 4 h ... 13 h.
#   median k = ceil(0.5 * 21) = 11 -> 4 h   (remaining 3 h 50 min)
#   p90    k = ceil(0.9 * 21) = 19 -> 12 h  (remaining 11 h 50 min)
# Open 3 h: the ten of 4..13 h survive. Remaining 1..10 h.
#   median k = ceil(0.5 * 11) = 6 -> 9 h    (remaining 6 h)
#   p90    k = ceil(0.9 * 11) = 10 -> 13 h  (remaining 10 h)
CASES = [(timedelta(minutes=10), 20, 4 * H, 12 * H, "3 h 50 min", "11 h 50 min"),
         (3 * H, 10, 9 * H, 13 * H, "6 h", "10 h")]


def incident(iid: str, start: datetime, duration: timedelta | None) -> ReplayIncident:
    ups = [ReplayUpdate(status="investigating", body="We are investigating elevated error rates.", at=start,
                        id=f"{iid}-0")]
    if duration is not None:
        ups.append(ReplayUpdate(status="resolved", body="Resolved.", at=start + duration, id=f"{iid}-1"))
    return ReplayIncident(id=iid, title=TITLE, impact="major", components=[("chatgpt", "ChatGPT")], updates=ups)


def world(now: datetime, elapsed: timedelta) -> tuple[list[ReplayIncident], datetime]:
    past = [incident(f"past{n:08d}", now - timedelta(days=40 - n), d) for n, d in enumerate(DURATIONS)]
    start = now - elapsed
    return past + [incident("open00000001", start, None)], start


def iso(t: datetime) -> datetime:
    return datetime.fromisoformat(t.replace("Z", "+00:00"))


@pytest.mark.parametrize("elapsed, cases, median, p90, median_words, p90_words", CASES,
                         ids=["open-10-min", "open-3-h"])
def test_open_10_min_and_3_h_get_their_own_estimates(tmp_path, elapsed, cases, median, p90, median_words,
                                                       p90_words):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    incidents, start = world(now, elapsed)
    # "since": the earliest start among the cases used (at 3 h only the ten long ones, from incident 10 on)
    since = incidents[20 - cases].updates[0].at.strftime("%Y-%m")
    sentence = (f"Similar incidents ({cases} major ChatGPT incidents since {since}): half were over within "
                f"{median_words} more, 9 in 10 within {p90_words}.")
    with ReplayServer(StatuspagePage(incidents), now=now + timedelta(seconds=1)) as srv, HTTPServer() as web:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0,
                           extra=f'[[notifiers]]\nname = "hook"\nurl = "{web.url()}"\n')
        run(cfg, "poll")                                       # the open incident is news: "opened"
        r = run(cfg, "status", "--json", ok=None)
        text = run(cfg, "status", ok=None).stdout.splitlines()
        report = tmp_path / "r.html"
        run(cfg, "report", "--out", str(report))
        diag = run(cfg, "diagnose", ok=None).stdout.splitlines()
        messages = [q.json() for q in web.requests]
    data = json.loads(r.stdout)
    assert r.exit_code == 2 and data["verdict"] == "wait"
    (i,) = data["incidents"]
    e = i["expected_resolution"]
    assert set(e) == {"median_at", "p90_at", "cases", "class"}
    assert (e["cases"], e["class"]) == (cases, "major ChatGPT incidents")
    assert abs(iso(e["median_at"]) - (start + median)) <= timedelta(seconds=1), (e, start)
    assert abs(iso(e["p90_at"]) - (start + p90)) <= timedelta(seconds=1), (e, start)
    assert e["median_at"].endswith("Z") and e["p90_at"].endswith("Z")
    assert text[1] == sentence and diag[1] == sentence
    assert sentence in report.read_text()
    (m,) = messages
    assert m["title"] == f"Wait: {TITLE}" and sentence in m["message"]


def test_too_few_cases_say_so(tmp_path):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    incidents, _ = world(now, timedelta(minutes=10))
    with ReplayServer(StatuspagePage(incidents[-5:]), now=now + timedelta(seconds=1)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0)
        data = json.loads(run(cfg, "status", "--json", ok=None).stdout)
        text = run(cfg, "status", ok=None).stdout.splitlines()
    assert data["incidents"][0]["expected_resolution"] is None
    assert text[1] == "No estimate: only 4 resolved incidents of openai to compare with."
