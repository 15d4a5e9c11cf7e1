"""A misbehaving status page: every fault of issue 5, served by the real replay server on 127.0.0.1 to the
real CLI (`monitor poll`), on a store that already holds good data, with a second healthy page in the same
config. For each fault: one clear line (no traceback), nothing stored or queued from bad data, the failure
counted (back-off), the other page polled as usual, and the next good poll recovers and catches up.

Each case writes or checks its row of docs/faults.md (see tests/faults_report.py)."""
from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Callable

import pytest

import faults_report
from helpers import db_rows, run, write_config
from replay import (
    INCIDENT_FILE_EXPIRED, Fault, IncidentIoPage, ReplayServer, StatuspagePage, incidentio_incidents,
)

UTC = timezone.utc
UPLOADS_2024 = "vn8j63zg56hz"        # 2024-05-07 "Elevated errors uploading files in ChatGPT"
DEADLINE = 2.0                       # seconds a whole poll may take (the page config's `deadline`)
CAP_MB = 1                           # the page config's `max_response_mb`
OPTS = {"deadline": DEADLINE, "max_response_mb": CAP_MB, "history_days": 0}
CONTENT = ("incidents", "updates", "incident_components", "tags", "components", "outbox", "deliveries")
API, FEED, IO_FEED = "/api/v2/incidents.json", "/history.atom", "/feed.atom"


# ------------------------------------------------------------------------------------------------ world

@dataclass
class Kind:
    """One page kind: its server, the good store of a poll at t1, and t2 when the page has news."""
    name: str
    srv: ReplayServer
    incident: str
    t0: datetime
    t1: datetime
    t2: datetime
    template: Path
    feed: str


@dataclass
class World:
    kinds: dict[str, Kind]
    other: ReplayServer              # a healthy second page in every config
    canary: ReplayServer             # a host the monitor must never contact


def backup(src: Path, dst: Path) -> None:
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        with b:
            a.backup(b)
    finally:
        a.close()
        b.close()


def config(d: Path, kind_srv: ReplayServer, other: ReplayServer, **opts) -> Path:
    return write_config(d, {"openai": kind_srv.base_url, "other": other.base_url}, **{**OPTS, **opts})


@pytest.fixture(scope="module")
def world(tmp_path_factory, openai_history, anthropic_history):
    other = ReplayServer(StatuspagePage(anthropic_history, name="Anthropic", api_limit=5, feed_limit=5)).start()
    canary = ReplayServer(None).start()
    sp = ReplayServer(StatuspagePage(openai_history, api_limit=10, feed_limit=10)).start()
    io = ReplayServer(IncidentIoPage(incidentio_incidents())).start()
    sp_inc = next(i for i in openai_history if i.id == UPLOADS_2024)
    io_inc = next(i for i in incidentio_incidents() if i.id == INCIDENT_FILE_EXPIRED)
    kinds = {}
    try:
        for name, srv, times, iid, feed in (
                ("statuspage", sp, [u.posted for u in sp_inc.updates], UPLOADS_2024, FEED),
                ("incidentio", io, [u.posted for u in io_inc.updates], INCIDENT_FILE_EXPIRED, IO_FEED)):
            d = tmp_path_factory.mktemp(name)
            t0, t1, t2 = (t + timedelta(seconds=30) for t in times[:3])
            srv.now = t1
            out = run(config(d, srv, other), "poll").stdout
            assert "openai: ok" in out and "other: ok" in out, out
            backup(d / "m.db", d / "template.db")
            kinds[name] = Kind(name, srv, iid, t0, t1, t2, d / "template.db", feed)
        yield World(kinds, other, canary)
    finally:
        for s in (other, canary, sp, io):
            s.stop()


@dataclass
class Env:
    kind: Kind
    world: World
    cfg: Path
    db: Path

    @property
    def srv(self) -> ReplayServer:
        return self.kind.srv

    def body(self, path: str, at: datetime | None = None) -> bytes:
        """What the page really serves at `path` at t1 (or `at`), uncompressed."""
        return self.srv.page.handle("GET", path, "", at or self.kind.t1).body

    def poll(self, *args: str):
        t = time.monotonic()
        r = run(self.cfg, "poll", *args, ok=None)
        r.seconds = time.monotonic() - t
        assert "Traceback" not in r.output, r.output
        return r


def fresh_env(world: World, kind: str, tmp_path: Path, **opts) -> Env:
    k = world.kinds[kind]
    backup(k.template, tmp_path / "m.db")
    k.srv.faults.clear()
    k.srv.now = k.t1
    world.other.faults.clear()
    return Env(k, world, config(tmp_path, k.srv, world.other, **opts), tmp_path / "m.db")


def snapshot(db: Path) -> dict:
    return {t: db_rows(db, f"select * from {t} order by id") for t in CONTENT}


def page_row(db: Path, name: str = "openai") -> dict:
    row = db_rows(db, "select consecutive_failures, not_before, last_outcome, last_success_at, last_poll_at "
                      "from pages where name = ?", name)[0]
    when = lambda v: datetime.fromisoformat(v).replace(tzinfo=UTC) if v else None  # noqa: E731
    return {"failures": row[0], "not_before": when(row[1]), "outcome": row[2], "last_success_at": when(row[3]),
            "last_poll_at": when(row[4])}


def page_line(output: str, name: str = "openai") -> str:
    """The one line the poll printed about page `name` (stdout when ok, the `Error:` line when not)."""
    lines = [ln for ln in output.splitlines() if re.match(rf"(Error: )?(.*; )?{name}: ", ln)]
    assert len(lines) == 1, output
    line = lines[0].removeprefix("Error: ")
    part = [p for p in re.split(r"; (?=\w+: (?:ok|failed|skipped))", line) if p.startswith(f"{name}: ")]
    assert len(part) == 1, line
    return part[0]


def normalise(text: str, env: Env) -> str:
    return text.replace(env.srv.base_url, "").replace(env.world.canary.base_url, "http://elsewhere")


# --------------------------------------------------------------------------------------- fault bodies

def _json_fault(obj, **kw) -> Fault:
    return Fault(status=200, body=json.dumps(obj).encode(), headers={"Content-Type": "application/json"}, **kw)


def _xml_fault(body: bytes, **kw) -> Fault:
    return Fault(status=200, body=body, headers={"Content-Type": "application/atom+xml; charset=utf-8"}, **kw)


def renamed_fields(env: Env) -> dict:
    data = json.loads(env.body(API))
    for inc in data["incidents"]:
        inc["code"], inc["title"], inc["updates"] = inc.pop("id"), inc.pop("name"), inc.pop("incident_updates")
    return {API: _json_fault(data)}


def renamed_list(env: Env) -> dict:
    data = json.loads(env.body(API))
    data["data"] = data.pop("incidents")
    return {API: _json_fault(data)}


_TIME_KEYS = ("created_at", "updated_at", "started_at", "resolved_at", "monitoring_at", "display_at")


def _retime_json(body: bytes, value) -> bytes:
    data = json.loads(body)

    def walk(o):
        if isinstance(o, dict):
            for k in list(o):
                if k in _TIME_KEYS and o[k]:
                    if value is None:
                        del o[k]
                    else:
                        o[k] = value
                else:
                    walk(o[k])
        elif isinstance(o, list):
            for x in o:
                walk(x)
    walk(data)
    return json.dumps(data).encode()


def _retime_feed(body: bytes, value: str | None) -> bytes:
    sub = (lambda m: b"") if value is None else (lambda m: b"<%s>%s</%s>" % (m[1], value.encode(), m[1]))
    head, cut, entries = body.partition(b"<entry>")
    return head + cut + re.sub(rb"<(published|updated)>[^<]*</\1>", sub, entries)


def missing_fields(env: Env) -> dict:
    """Every incident without its title and dates, every other one without its id as well."""
    data = json.loads(_retime_json(env.body(API), None))
    for n, inc in enumerate(data["incidents"]):
        inc.pop("name")
        if n % 2:
            inc.pop("id")
    return {API: _json_fault(data)}


def feed_missing_fields(env: Env) -> dict:
    body = _retime_feed(env.body(FEED), None)
    head, cut, entries = body.partition(b"<entry>")
    entries = re.sub(rb"<title>[^<]*</title>", b"", entries)
    parts = entries.split(b"<entry>")
    for n in range(1, len(parts), 2):       # every other entry loses its id and link too
        parts[n] = re.sub(rb"<id>[^<]*</id>|<link [^>]*/>", b"", parts[n])
    return {FEED: _xml_fault(head + cut + b"<entry>".join(parts))}


def future_times(env: Env) -> dict:
    return {API: _json_fault(json.loads(_retime_json(env.body(API), "2099-01-01T00:00:00.000Z"))),
            FEED: _xml_fault(_retime_feed(env.body(FEED), "2099-01-01T00:00:00Z"))}


def past_times(env: Env) -> dict:
    return {API: _json_fault(json.loads(_retime_json(env.body(API), "1970-01-01T00:00:00.000Z"))),
            FEED: _xml_fault(_retime_feed(env.body(FEED), "1999-12-31T23:59:59Z"))}


def contradictory(env: Env) -> dict:
    """The API calls the incident resolved (without a resolving update) and the feed serves a stale copy
    of it under another title."""
    data = json.loads(env.body(API))
    inc = next(i for i in data["incidents"] if i["id"] == UPLOADS_2024)
    inc["status"], inc["resolved_at"] = "resolved", inc["updated_at"]
    feed = env.body(FEED, env.kind.t0).replace(b"<title>Elevated errors uploading files in ChatGPT</title>",
                                               b"<title>Scheduled maintenance (completed)</title>")
    return {API: _json_fault(data), FEED: _xml_fault(feed)}


def io_contradictory(env: Env) -> dict:
    feed = env.body(IO_FEED, env.kind.t0)
    feed = re.sub(rb"File uploads to ChatGPT conversations are failing[^\]]*", b"Everything is fine", feed)
    data = json.loads(env.body(API))
    data["incidents"][0]["status"] = "resolved"
    return {IO_FEED: _xml_fault(feed), API: _json_fault(data)}


def io_wrong_types(env: Env) -> dict:
    """Fields of types nobody documented in the API list and the timeline; the feed carries the news."""
    t2 = env.kind.t2
    api = json.loads(env.body(API, t2))
    for x in api["incidents"]:
        x.update(incident_updates=5, impact=["major"], name=7, components="File uploads")
    tl = json.loads(env.body(f"/proxy/status.openai.com/incidents/{env.kind.incident}", t2))
    tl["incident"].update(updates=5, affected_components="File uploads", current_worst_impact=4,
                          component_impacts=[{"component_id": 9, "status": "under_maintenance"}, 3])
    return {API: _json_fault(api), "/proxy/*": _json_fault(tl)}


def truncated_documents(env: Env) -> dict:
    api, feed = env.body(API), env.body(FEED)
    return {API: Fault(status=200, body=api[: len(api) // 2], headers={"Content-Type": "application/json"}),
            FEED: _xml_fault(feed[: len(feed) // 2])}


_LOL = b"".join(b'<!ENTITY lol%d "%s">' % (n, (b"&lol%d;" % (n - 1)) * 10) for n in range(1, 10))


def entity_bomb(env: Env) -> dict:
    feed = env.body(FEED).replace(b"<feed ", b'<!DOCTYPE feed [<!ENTITY lol0 "lol">' + _LOL + b"]>\n<feed ", 1)
    feed = feed.replace(b"<title>Elevated errors", b"<title>&lol9; Elevated errors", 1)
    return {FEED: _xml_fault(feed)}


MARKER = "XXE-MARKER-5f1c"


def external_entity(env: Env) -> dict:
    secret = env.cfg.parent / "secret.txt"
    secret.write_text(MARKER)
    dtd = (f'<!DOCTYPE feed [<!ENTITY xxe SYSTEM "file://{secret}"><!ENTITY web SYSTEM '
           f'"{env.world.canary.base_url}/xxe"><!ENTITY % remote SYSTEM "{env.world.canary.base_url}/dtd"> '
           f"%remote;]>\n").encode()
    feed = env.body(FEED).replace(b"<feed ", dtd + b"<feed ", 1)
    feed = feed.replace(b"<title>Elevated errors", b"<title>&xxe;&web; Elevated errors", 1)
    return {FEED: _xml_fault(feed)}


class Counting:
    """A generated body of `size` bytes that counts what the server managed to hand to the socket."""

    def __init__(self, size: int):
        self.size, self.sent = size, 0

    def __call__(self):
        def gen():
            chunk = b'{"incidents":[' + b" " * (1 << 16)
            while self.sent < self.size:
                piece = chunk[: self.size - self.sent]
                self.sent += len(piece)
                yield piece
        return gen()


def huge(declared: bool):
    def make(env: Env) -> dict:
        env.counters = {p: Counting(100 << 20) for p in (API, FEED)}
        return {p: Fault(status=200, stream=c, content_length=c.size if declared else None,
                         headers={"Content-Type": "application/json"}) for p, c in env.counters.items()}
    return make


def not_read_to_the_end(env: Env, r) -> None:
    for path, c in env.counters.items():
        assert c.sent < 24 << 20, (path, c.sent)      # of 100 MB: stopped after the cap (and socket buffers)


def redirect_elsewhere(env: Env) -> dict:
    return {"/*": Fault(status=302, body=b"", headers={"Location": env.world.canary.base_url + "{path}"})}


def nothing_elsewhere(env: Env, r) -> None:
    assert env.world.canary.requests == []


def xxe_not_resolved(env: Env, r) -> None:
    assert env.world.canary.requests == []
    con = sqlite3.connect(env.db)
    try:
        assert not any(MARKER in line for line in con.iterdump())
    finally:
        con.close()


def within_deadline(env: Env, r) -> None:
    assert r.seconds < DEADLINE + 1.5, r.seconds


def rate_limited(env: Env, r) -> None:
    """Retry-After honoured: the next poll inside the window does not contact the page at all."""
    pr = page_row(env.db)
    now = datetime.now(UTC)
    assert pr["not_before"] is not None and now < pr["not_before"] <= now + timedelta(seconds=3), pr
    n = len(env.srv.requests)
    again = env.poll()
    assert "openai: skipped: the page asked us to wait until" in again.output, again.output
    assert "other: ok" in again.output
    assert len(env.srv.requests) == n                  # not one request inside the window
    time.sleep(max(0.0, (pr["not_before"] - datetime.now(UTC)).total_seconds()) + 0.05)


def clamped_to_a_day(env: Env) -> None:
    """A Retry-After far beyond a day is read as one day: the poll succeeds from the feed and waits 24 h."""
    pr = page_row(env.db)
    now = datetime.now(UTC)
    assert now + timedelta(hours=23, minutes=59) < pr["not_before"] <= now + timedelta(days=1), pr


def in_seconds(s: int) -> str:
    return str(s)


def http_date_in(s: int) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=s), usegmt=True)


# ----------------------------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    fault: str                                  # what the page does (report)
    where: str                                  # where it was injected (report)
    faults: Callable[[Env], dict]               # path pattern -> Fault
    says: str                                   # regex the page's one line must match
    fails: bool = True                          # every source failed: the page's poll failed
    check: Callable[[Env, object], None] | None = None
    backoff: str | None = None                  # report text for the back-off column (default derived)
    news: bool = False                          # the fault hits while the page has news (t2), not before


def every(f: Callable[[], Fault]) -> Callable[[Env], dict]:
    return lambda env: {"/*": f()}


CASES = [
    Case("http-500", "statuspage", "HTTP 500", "all sources", every(lambda: Fault.error(500)),
         r"failed: HTTP 500 from /api/v2/incidents\.json; HTTP 500 from /history\.atom$"),
    Case("http-502", "statuspage", "HTTP 502", "all sources", every(lambda: Fault.error(502)), r"HTTP 502"),
    Case("http-503", "statuspage", "HTTP 503 (no Retry-After)", "all sources", every(lambda: Fault.error(503)),
         r"HTTP 503"),
    Case("http-503-api", "statuspage", "HTTP 503", API, lambda env: {"/api/v2/*": Fault.error(503)},
         r"^openai: ok \(1 source\(s\)\), unchanged, warnings: HTTP 503 from /api/v2/incidents\.json$",
         fails=False),
    Case("429-seconds", "statuspage", "HTTP 429, Retry-After: 1", "all sources",
         every(lambda: Fault.rate_limited(in_seconds(1))), r"HTTP 429", check=rate_limited,
         backoff="consecutive_failures 1; not_before = Retry-After: the next poll inside the window sends no "
                 "request"),
    Case("503-huge-retry-after", "statuspage", "HTTP 503, Retry-After: 99999999999999 (overflows a timedelta)",
         API, lambda env: {API: Fault(status=503, body=b"busy", headers={"Retry-After": "99999999999999"})},
         r"^openai: ok \(1 source\(s\)\), unchanged, warnings: HTTP 503 from /api/v2/incidents\.json$",
         fails=False, check=lambda env, r: clamped_to_a_day(env),
         backoff="not_before = Retry-After clamped to one day (the feed answered)"),
    Case("429-date", "statuspage", "HTTP 429, Retry-After: an HTTP date 2 s ahead", FEED,
         lambda env: {FEED: Fault.rate_limited(http_date_in(2))}, r"warnings: HTTP 429 from /history\.atom",
         fails=False, check=rate_limited,
         backoff="not_before = Retry-After (the page's other source answered): the next poll inside the "
                 "window sends no request"),
    Case("hang", "statuspage", "accepts the connection, never answers", "all sources",
         every(Fault.never_answer), r"deadline", check=within_deadline),
    Case("trickle", "statuspage", "sends its body at 200 bytes/s", "all sources",
         lambda env: {API: Fault(status=200, body=env.body(API), trickle=200,
                                 headers={"Content-Type": "application/json"}),
                      FEED: _xml_fault(env.body(FEED), trickle=200)}, r"deadline", check=within_deadline),
    Case("hang-api", "statuspage", "accepts the connection, never answers", API,
         lambda env: {API: Fault.never_answer()}, r"warnings: no answer from /api/v2/incidents\.json within the "
         r"poll's 2 s deadline$", fails=False, check=within_deadline),
    Case("html-200", "statuspage", "HTML challenge page with status 200", "all sources",
         every(Fault.html_page), r"an HTML page"),
    Case("empty", "statuspage", "empty body, status 200", "all sources", every(Fault.empty), r"empty body"),
    Case("truncated-transfer", "statuspage", "closes the connection halfway through the body", "all sources",
         lambda env: {API: Fault(status=200, body=env.body(API), truncate=0.5,
                                 headers={"Content-Type": "application/json"}),
                      FEED: _xml_fault(env.body(FEED), truncate=0.5)}, r"closed before"),
    Case("truncated-document", "statuspage", "a complete response holding half a document", "all sources",
         truncated_documents, r"not JSON.*not a valid feed"),
    Case("invalid-utf8", "statuspage", "invalid UTF-8 in JSON and feed", "all sources",
         lambda env: {API: Fault.invalid_utf8("json"), FEED: Fault.invalid_utf8("xml")}, r"UTF-8"),
    Case("huge", "statuspage", "a 100 MB body (Content-Length given)", "all sources", huge(True),
         r"larger than 1 MB", check=not_read_to_the_end),
    Case("huge-chunked", "statuspage", "a 100 MB body (no Content-Length)", "all sources", huge(False),
         r"larger than 1 MB", check=not_read_to_the_end),
    Case("gzip-bomb", "statuspage", "gzip bomb: 256 KB inflating to 256 MB", "all sources",
         every(lambda: Fault.gzip_bomb(256 << 20)), r"1 MB"),
    Case("redirect-loop", "statuspage", "redirects to itself forever", "all sources",
         every(Fault.redirect_loop), r"redirects"),
    Case("redirect-away", "statuspage", "redirects to another host", "all sources", redirect_elsewhere,
         r"another host", check=nothing_elsewhere),
    Case("json-renamed-list", "statuspage", "JSON shape changed: `incidents` renamed", API, renamed_list,
         r"no 'incidents' list", fails=False),
    Case("json-renamed-fields", "statuspage", "JSON shape changed: `id`, `name`, `incident_updates` renamed", API,
         renamed_fields, r"incidents\.json", fails=False),
    Case("missing-fields", "statuspage", "incidents without title and dates, half without id", API,
         missing_fields, r"warnings", fails=False),
    Case("feed-missing-fields", "statuspage", "feed entries without title and dates, half without id", FEED,
         feed_missing_fields, r"warnings", fails=False),
    Case("future-times", "statuspage", "every timestamp in 2099", "all sources", future_times,
         r"^openai: ok \(2 source\(s\)\), unchanged, warnings: /api/v2/incidents\.json: implausible timestamps "
         r"ignored: \d+ \(e\.g\. 2099-01-01T00:00:00Z\); /history\.atom: implausible timestamps ignored: \d+ "
         r"\(e\.g\. 2099-01-01T00:00:00Z\)$", fails=False),
    Case("past-times", "statuspage", "every timestamp in 1970 / 1999", "all sources", past_times,
         r"^openai: ok \(2 source\(s\)\), unchanged, warnings: /api/v2/incidents\.json: implausible timestamps "
         r"ignored: \d+ \(e\.g\. 1970-01-01T00:00:00Z\); /history\.atom: implausible timestamps ignored: \d+ "
         r"\(e\.g\. 1999-12-31T23:59:59Z\)$", fails=False),
    Case("entity-bomb", "statuspage", "XML entity-expansion bomb in the feed", FEED, entity_bomb, r"entit",
         fails=False),
    Case("external-entity", "statuspage", "external entities (file://, http://, parameter entity) in the feed",
         FEED, external_entity, r"entit", fails=False, check=xxe_not_resolved),
    Case("contradictory", "statuspage", "same incident: API says resolved without a resolving update, feed "
         "serves an older copy under another title", "all sources", contradictory,
         r"^openai: ok \(2 source\(s\)\), unchanged$", fails=False),
    Case("io-html-200", "incidentio", "HTML challenge page with status 200", "all sources",
         every(Fault.html_page), r"an HTML page"),
    Case("io-hang", "incidentio", "accepts the connection, never answers", "all sources",
         every(Fault.never_answer), r"deadline", check=within_deadline),
    Case("io-timeline-hang", "incidentio", "the incident's timeline (proxy) never answers while the "
         "incident has a new update", "/proxy/*", lambda env: {"/proxy/*": Fault.never_answer()},
         r"^openai: ok \(2 source\(s\)\), 0 new, 1 changed, 1 message\(s\) queued, warnings: incident timelines: "
         r"no answer within the poll's 2 s deadline from /proxy/status\.openai\.com/incidents/\w+$",
         fails=False, news=True, check=within_deadline),
    Case("io-timeline-shape", "incidentio", "the incident's timeline JSON changed shape while the incident has "
         "a new update", "/proxy/*", lambda env: {"/proxy/*": _json_fault({"data": {"id": env.kind.incident}})},
         r"warnings: timelines unavailable for 1 incident: incident timeline: no 'incident' with an id",
         fails=False, news=True),
    Case("io-wrong-types", "incidentio", "fields of undocumented types in the API list and the timeline "
         "(`updates: 5`, `name: 7`, `affected_components` a string, impact `under_maintenance`) while the "
         "incident has a new update", "`/api/v2/incidents.json`, `/proxy/*`", io_wrong_types,
         r"^openai: ok \(2 source\(s\)\), 0 new, 1 changed, 1 message\(s\) queued, warnings: "
         r"/api/v2/incidents\.json: incidents without a title: \d+$", fails=False, news=True),
    Case("io-timelines-withdrawn", "incidentio", "the undocumented proxy is withdrawn: every timeline answers "
         "404 while the incident has a new update", "/proxy/*", lambda env: {"/proxy/*": Fault.error(404)},
         r"^openai: ok \(2 source\(s\)\), 0 new, 1 changed, 1 message\(s\) queued, warnings: timelines "
         r"unavailable for 1 incident: HTTP 404$", fails=False, news=True),
    Case("io-contradictory", "incidentio", "same incident: API says resolved, feed serves an older copy under "
         "another title", "all sources", io_contradictory, r"^openai: ok \(2 source\(s\)\), unchanged$", fails=False),
]


def assert_news(env: Env, before: dict) -> None:
    """The update the page published at t2 is stored, with exactly one message for it."""
    new = [row for row in snapshot(env.db)["outbox"] if row not in before["outbox"]]
    assert [(row[2], row[3]) for row in new] == [("log", "updated")], new
    assert env.kind.incident in new[0][4]
    statuses = db_rows(env.db, "select u.status from updates u join incidents i on i.id = u.incident_id "
                               "where i.page_incident_id = ? order by u.published_at", env.kind.incident)
    assert [s for s, in statuses] == ["investigating", "identified", "monitoring"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, world: World, tmp_path):
    env = fresh_env(world, case.kind, tmp_path)
    k = env.kind
    before = snapshot(env.db)
    other_before = page_row(env.db, "other")["last_success_at"]
    world.canary.clear_requests()
    k.srv.faults.update(case.faults(env))
    if case.news:
        k.srv.now = k.t2

    r = env.poll()
    line = normalise(page_line(r.output), env)
    assert r.exit_code == (1 if case.fails else 0), r.output
    assert re.search(case.says, line), line
    assert "Traceback" not in r.output
    assert page_line(r.output, "other").startswith("other: ok")            # one bad page never stops another
    assert page_row(env.db, "other")["last_success_at"] > other_before
    if case.news:   # what the list sources said is kept: the new update and its one message
        assert_news(env, before)
    else:
        assert snapshot(env.db) == before                                   # nothing stored, nothing queued
    pr = page_row(env.db)
    assert pr["failures"] == (1 if case.fails else 0), pr
    assert pr["outcome"] and normalise(pr["outcome"], env) == line.split(": ", 1)[1]
    if case.check:
        case.check(env, r)

    # the fault is gone and the page has news: the next poll stores it and queues its one message
    k.srv.faults.clear()
    k.srv.now = k.t2
    r2 = env.poll("--force")        # a Retry-After the fault left (up to a day) is not waited for
    assert r2.exit_code == 0, r2.output
    assert page_line(r2.output).startswith("openai: ok"), r2.output
    pr = page_row(env.db)
    assert pr["failures"] == 0 and pr["not_before"] is None, pr
    assert_news(env, before)
    if case.news:   # and the timeline missed during the fault is fetched now
        assert db_rows(env.db, "select timeline_complete from incidents where page_incident_id = ?",
                       k.incident) == [(1,)]

    backoff = case.backoff or ("consecutive_failures 1" if case.fails else "none: the page answered")
    faults_report.record("page", f"{CASES.index(case):02d}", [
        f"`{case.id}`", case.fault, case.where if case.where == "all sources" or "`" in case.where else f"`{case.where}`",
        f"exit {r.exit_code}: {line}", backoff])


# ------------------------------------------------------------------------------ repeated failures, status

def sleep_until(t: datetime | None) -> None:
    if t is not None:
        time.sleep(max(0.0, (t - datetime.now(UTC)).total_seconds()) + 0.05)


def test_repeated_failures_back_off_warn_and_status_says_unknown(world: World, tmp_path):
    env = fresh_env(world, "statuspage", tmp_path, poll_interval=1)
    k = env.kind
    k.srv.faults["/*"] = Fault.error(500)
    seen = []
    for n in (1, 2, 3):
        sleep_until(page_row(env.db)["not_before"])
        t = datetime.now(UTC)
        r = env.poll()
        pr = page_row(env.db)
        assert r.exit_code == 1 and pr["failures"] == n, (r.output, pr)
        warned = "WARNING monitor.poll: page openai: 3 polls in a row failed: HTTP 500 from" in r.output
        assert warned == (n == 3), r.output
        if n == 1:
            assert pr["not_before"] is None                     # one failure: the next interval as usual
        else:                                                   # then poll_interval * 2**(n-2), at most 15 min
            wait = (pr["not_before"] - pr["last_poll_at"]).total_seconds()
            assert wait == 2 ** (n - 2) and t <= pr["last_poll_at"], pr
            count = len(k.srv.requests)
            skipped = env.poll()
            # our own back-off, named as ours (not the page's), and a hand-run poll says how to force it
            assert re.search(rf"^Error: openai: skipped: backing off after {n} failed polls until "
                             r"\d\d:\d\d:\d\d UTC \(--force polls anyway\)$", skipped.output, re.M), skipped.output
            assert len(k.srv.requests) == count                 # backing off: not one request
            if n == 3:                                          # --force polls at once
                forced = env.poll("--force")
                assert forced.exit_code == 1 and len(k.srv.requests) > count, forced.output
                assert page_row(env.db)["failures"] == 4
            seen.append(f"{wait:g}")
    st = run(env.cfg, "status", "--json", ok=None)
    data = json.loads(st.stdout)
    page = next(p for p in data["pages"] if p["name"] == "openai")
    assert (st.exit_code, data["verdict"]) == (3, "unknown"), st.output
    assert page["consecutive_failures"] == 4 and not page["fresh"] and "HTTP 500" in page["last_outcome"]
    assert "openai" in data["reason"]

    k.srv.faults.clear()
    sleep_until(page_row(env.db)["not_before"])
    assert env.poll().exit_code == 0
    assert page_row(env.db)["failures"] == 0
    st = run(env.cfg, "status", "--json", ok=None)
    assert json.loads(st.stdout)["verdict"] == "wait" and st.exit_code in (1, 2)   # the upload incident at t1
    faults_report.record("page", "90", [
        "`repeated-500`", "HTTP 500 on every poll", "all sources",
        "exit 1 each time; the 3rd failure in a row also logs `WARNING monitor.poll: page openai: 3 polls in a "
        "row failed: HTTP 500 from …`; `monitor status --json` then says `unknown`, exit 3 (never an all-clear)",
        f"1st failure: none; then `not_before` = poll_interval × 2^(n-2), capped at 15 min (here "
        f"{' s, '.join(map(str, seen))} s); a poll inside it sends no request; the first good poll resets it"])


# ------------------------------------------------------------------------------------------- security

def test_links_from_the_page_never_reach_a_message(world: World, tmp_path):
    """Third-party links are not passed on: the message links to the configured page's own incident URL."""
    from monitor.notify.render import render

    env = fresh_env(world, "statuspage", tmp_path)
    k = env.kind
    at = (k.t1 - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    evil = "evil12345678"
    data = json.loads(env.body(API))
    data["incidents"].insert(0, {
        "id": evil, "name": "Elevated errors uploading files <script>alert(1)</script>", "status": "investigating",
        "impact": "minor", "shortlink": "javascript:alert(1)", "created_at": at, "started_at": at,
        "updated_at": at, "incident_updates": [{
            "id": "evil-1", "status": "investigating", "display_at": at, "created_at": at,
            "body": "File uploads fail. [Details](javascript:alert(document.cookie)) <a href=\"javascript:x\">x</a>"}],
        "components": []})
    entry = (f'<entry><id>tag:x,2005:Incident/1</id><updated>{at}</updated>'
             f'<link rel="alternate" type="text/html" href="javascript:alert(1)//incidents/{evil}"/>'
             f"<title>Elevated errors uploading files</title><content type=\"html\"></content></entry>").encode()
    feed = env.body(FEED).replace(b"<entry>", entry + b"<entry>", 1)
    k.srv.faults.update({API: _json_fault(data), FEED: _xml_fault(feed)})
    r = env.poll()
    assert r.exit_code == 0, r.output
    rows = db_rows(env.db, "select payload from outbox where dedupe_key like ?", f"%{evil}%")
    assert len(rows) == 1
    payload = json.loads(rows[0][0])
    assert payload["url"] == f"{k.srv.base_url}/incidents/{evil}"
    text, slack, email = (render(payload, fmt) for fmt in ("text", "slack", "email"))
    assert f"Details: {payload['url']}" in text.body                  # plain text stays plain text
    assert "<javascript" not in slack.body and "<script>" not in slack.body
    assert re.findall(r"<(https?:[^|>]*)\|", slack.body) == [payload["url"]]   # the only Slack link
    assert re.findall(r'href="([^"]*)"', email.html) == [payload["url"]]      # the only HTML link
    assert "<script>" not in email.html
    faults_report.record("page", "91", [
        "`javascript-links`", "a new upload incident whose shortlink, feed link and update text carry "
        "`javascript:` links", "all sources",
        "exit 0: the incident is stored and its message queued; the message links only to "
        "`<base_url>/incidents/<id>`, built from the configured page, and renders the page's text as text",
        "none: the page answered"])


def test_the_monitor_contacts_only_the_configured_page(world: World, tmp_path, monkeypatch):
    import httpx

    urls: list[str] = []
    send = httpx.AsyncClient.send

    async def recording_send(self, request, **kw):
        urls.append(str(request.url))
        return await send(self, request, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "send", recording_send)
    world.canary.clear_requests()
    canary = world.canary.base_url
    for kind in ("statuspage", "incidentio"):
        d = tmp_path / kind
        d.mkdir()
        env = fresh_env(world, kind, d)
        k = env.kind
        k.srv.now = k.t2                                # the incident.io page fetches timelines too
        feed = env.body(k.feed, k.t2).replace(b"https://status.openai.com", canary.encode())
        k.srv.faults.update({k.feed: _xml_fault(feed), "/api/v2/components.json": Fault(
            status=301, body=b"", headers={"Location": canary + "/api/v2/components.json"})})
        assert env.poll().exit_code == 0
    allowed = tuple(s.base_url + "/" for s in (world.kinds["statuspage"].srv, world.kinds["incidentio"].srv,
                                                 world.other))
    assert urls and all(u.startswith(allowed) for u in urls), [u for u in urls if not u.startswith(allowed)]
    assert any("/proxy/" in u for u in urls)
    assert world.canary.requests == []
    faults_report.record("page", "92", [
        "`only-configured-hosts`", "links to another host in its feed, a redirect to another host", "feed, "
        "`/api/v2/components.json`",
        "every request of both page kinds' polls (lists, feeds, timelines) went to a configured page; the "
        "other host got none", "none: the page answered"])


def test_status_is_no_all_clear_right_after_every_source_failed(world: World, tmp_path):
    env = fresh_env(world, "statuspage", tmp_path)
    k = env.kind
    k.srv.now = k.t2 + timedelta(days=2)                # the upload incident is resolved: all clear
    assert env.poll().exit_code == 0
    assert run(env.cfg, "status", "--json", ok=None).exit_code == 0
    k.srv.faults["/*"] = Fault.error(500)
    assert env.poll().exit_code == 1                    # every source fails; the last good data is seconds old
    st = run(env.cfg, "status", "--json", ok=None)
    assert (st.exit_code, json.loads(st.stdout)["verdict"]) == (3, "unknown"), st.output
