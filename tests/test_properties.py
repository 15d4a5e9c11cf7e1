"""Property tests (Hypothesis) for every parser of every page kind: a real answer, rendered by the replay
server from real history, with one field position replaced by an arbitrary JSON value (for feeds: one
element's text replaced, or the element replaced by arbitrary XML, or removed). Each parser returns
well-typed records, which merge without error, or raises the source's ParseError: nothing else."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from replay import INCIDENT_FILE_PROCESSING, IncidentIoPage, StatuspagePage, incidentio_incidents

from monitor.merge import merge
from monitor.records import IMPACTS, STATUSES, ComponentRec, IncidentRec, SourceResult, UpdateRec
from monitor.sources import kind
from monitor.sources.common import Context, ParseError

EXAMPLES = 80
PROPS = settings(deadline=None, max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2026, 3, 2, 16, 30, tzinfo=timezone.utc)
CTX = Context(base_url="https://status.openai.com", host="status.openai.com", now=NOW,
              time_zone="America/Los_Angeles")

# words the pages use, in places they were not documented for, as often as arbitrary scalars
WORDS = ["", " ", "under_maintenance", "full_outage", "operational", "maintenance", "resolved", "postmortem",
         "completed", "none", "critical", "2026-03-02T16:00:00Z", "2099-01-01T00:00:00Z", "0001-01-01", "x" * 5]
json_values = st.recursive(
    st.sampled_from(WORDS) | st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


def _answers() -> dict[str, tuple[str, str, bytes, str]]:
    """Real answers, small: case -> (kind, path, body, content type)."""
    from replay import load_history

    sp = StatuspagePage(load_history("openai")[-3:], time_zone="America/Los_Angeles", api_limit=3, feed_limit=3)
    io = IncidentIoPage(incidentio_incidents()[-3:], api_bodies="markdown", api_limit=3, feed_limit=3,
                        window_updates=True)
    at_sp = sp.default_now()
    at_io = next(i for i in io.incidents if i.id == INCIDENT_FILE_PROCESSING).updates[2].posted
    host = "/proxy/status.openai.com"
    cases = {
        "statuspage-api": ("statuspage", sp, at_sp, "/api/v2/incidents.json", ""),
        "statuspage-components": ("statuspage", sp, at_sp, "/api/v2/components.json", ""),
        "statuspage-feed": ("statuspage", sp, at_sp, "/history.atom", ""),
        "incidentio-api": ("incidentio", io, at_io, "/api/v2/incidents.json", ""),
        "incidentio-components": ("incidentio", io, at_io, "/api/v2/components.json", ""),
        "incidentio-feed": ("incidentio", io, at_io, "/feed.atom", ""),
        "incidentio-timeline": ("incidentio", io, at_io, f"{host}/incidents/{INCIDENT_FILE_PROCESSING}", ""),
        "incidentio-window": ("incidentio", io, at_io, f"{host}/incidents",
                              "start_at=2025-12-10T00:00:00Z&end_at=2026-03-03T00:00:00Z"),
    }
    out = {}
    for case, (k, page, at, path, query) in cases.items():
        r = page.handle("GET", path, query, at)
        assert r.status == 200, (case, r.status)
        out[case] = (k, path + (f"?{query}" if query else ""), r.body, r.content_type)
    return out


ANSWERS = _answers()
JSON_CASES = [c for c, (_k, p, _b, _t) in ANSWERS.items() if not p.endswith(".atom")]
FEED_CASES = [c for c, (_k, p, _b, _t) in ANSWERS.items() if p.endswith(".atom")]


def _positions(value, path=()):
    """Every field position of a JSON value: the paths of keys and list items, the root included."""
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _positions(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _positions(v, path + (i,))


def _replaced(doc, path, new):
    if not path:
        return new
    doc = json.loads(json.dumps(doc))
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return doc


def read(case: str, body: bytes):
    k, path, _body, ctype = ANSWERS[case]
    try:
        return kind(k).parse(path, body, ctype, CTX)
    except ParseError:
        return None


def check(result) -> None:
    """Records of the declared types, which merge cleanly."""
    assert result is None or isinstance(result, SourceResult), type(result)
    if result is None:
        return
    by_id = defaultdict(list)
    for r in result.incidents:
        assert isinstance(r, IncidentRec) and isinstance(r.page_incident_id, str) and r.page_incident_id
        assert isinstance(r.title, str) and r.status in (None, *STATUSES) and r.impact in (None, *IMPACTS)
        for t in (r.started_at, r.updated_at, r.resolved_at):
            assert t is None or (isinstance(t, datetime) and t.tzinfo is not None)
        for u in r.updates:
            assert isinstance(u, UpdateRec) and isinstance(u.body, str) and u.status in (None, *STATUSES)
            assert u.page_update_id is None or isinstance(u.page_update_id, str)
            assert u.published_at is None or u.published_at.tzinfo is not None
        for c in (*r.components, *result.components):
            assert isinstance(c, ComponentRec) and isinstance(c.key, str) and isinstance(c.name, str)
            assert c.impact is None or isinstance(c.impact, str)
        by_id[r.page_incident_id].append(r)
    for recs in by_id.values():
        merge(None, recs, NOW)
    assert all(isinstance(w, str) for w in result.extra.get("warnings", ()))


def test_real_answers_parse():
    """The strategies start from answers every parser reads in full."""
    for case in ANSWERS:
        res = read(case, ANSWERS[case][2])
        assert res is not None and (res.incidents or res.components), case
        check(res)


@pytest.mark.parametrize("case", JSON_CASES)
@PROPS
@given(data=st.data())
def test_json_parsers_with_one_field_replaced(case, data):
    doc = json.loads(ANSWERS[case][2])
    path = data.draw(st.sampled_from(list(_positions(doc))), label="field")
    new = data.draw(json_values, label="value")
    check(read(case, json.dumps(_replaced(doc, path, new)).encode()))


xml_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
xml_elements = st.recursive(
    st.builds(lambda tag, text: (tag, text, []), st.sampled_from(["b", "li", "p", "small", "title", "id", "link",
                                                                  "updated", "summary", "x:y"]), xml_text),
    lambda inner: st.builds(lambda tag, kids: (tag, "", kids), st.sampled_from(["ul", "entry", "content", "div"]),
                            st.lists(inner, max_size=3)),
    max_leaves=6)


def _element(spec):
    tag, text, kids = spec
    el = ET.Element(tag.replace(":", "_"))
    el.text = text
    el.extend(_element(k) for k in kids)
    return el


@pytest.mark.parametrize("case", FEED_CASES)
@PROPS
@given(data=st.data())
def test_feed_parsers_with_one_element_changed(case, data):
    ET.register_namespace("", "http://www.w3.org/2005/Atom")
    root = ET.fromstring(ANSWERS[case][2])
    parents = {c: p for p in root.iter() for c in p}
    elements = list(root.iter())
    el = elements[data.draw(st.integers(0, len(elements) - 1), label="element")]
    how = data.draw(st.sampled_from(["text", "replace", "remove", "attribute"]), label="how")
    if how == "text":
        el.text = data.draw(xml_text, label="text")
    elif how == "attribute":
        el.set(data.draw(st.sampled_from(["href", "type", "rel"])), data.draw(xml_text, label="attribute"))
    elif el in parents:
        parent = parents[el]
        i = list(parent).index(el)
        parent.remove(el)
        if how == "replace":
            parent.insert(i, _element(data.draw(xml_elements, label="xml")))
    check(read(case, ET.tostring(root, encoding="utf-8", xml_declaration=True)))


@pytest.mark.parametrize("case", list(ANSWERS))
@settings(deadline=None, max_examples=15)
@given(body=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_any_bytes(case, body):
    check(read(case, body))


# ------------------------------------------------------------------------------------------------ headers

HEADER_NAMES = ["retry-after", "content-length", "content-encoding", "content-type", "etag", "last-modified"]
header_values = (st.sampled_from(["99999999999999", "9" * 5000, "-1", "0", "1e9", "²", "Wed, 21 Oct 99999 07:28:00 GMT",
                                  "Fri, 31 Dec 9999 23:59:59 -2359", "Mon, 01 Jan 0001 00:00:00 +2359", "gzip, gzip",
                                  "x" * 5000, ""])
                 | st.integers(min_value=-10**20, max_value=10**20).map(str)
                 | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60))


@PROPS
@given(st.sampled_from(["retry-after"]) | st.sampled_from(HEADER_NAMES), header_values,
       st.sampled_from([200, 429, 503]))
@example("retry-after", "99999999999999", 503)          # OverflowError in a timedelta, before
@example("retry-after", "Fri, 31 Dec 9999 23:59:59 -2359", 429)
@example("content-length", "9" * 5000, 200)              # int() of more than 4300 digits: ValueError
@example("etag", "x" * 5000, 200)
@example("content-length", "\u00b2", 200)              # a digit to str.isdigit(), not to int()
def test_any_header_a_page_sends_fails_at_most_its_source(name, value, status):
    """A real answer (a 200 with a JSON body, or a 429/503) with one header replaced by an arbitrary value:
    reading it returns the body or raises FetchError, and a Retry-After is at most a day ahead."""
    import asyncio
    from datetime import timedelta

    import httpx

    from monitor.sources.http import FetchError, _read, retry_after

    body = b'{"incidents": []}'
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    headers = [(k.encode(), v.encode()) for k, v in {**headers, name: value}.items()]   # bytes, as sent
    r = httpx.Response(status, headers=headers, stream=httpx.ByteStream(body),
                       request=httpx.Request("GET", "https://status.openai.com/api/v2/incidents.json"))
    try:
        got = asyncio.run(_read(r, "/api/v2/incidents.json", None, None, 1 << 20))
    except FetchError as exc:
        if status != 200 and name == "retry-after" and exc.retry_after is not None:
            assert NOW <= retry_after(value, NOW) <= NOW + timedelta(days=1)
            assert exc.retry_after <= datetime.now(timezone.utc) + timedelta(days=1, seconds=5)
        return
    assert status == 200 and got.body == body
    assert all(v is None or len(v) <= 1024 for v in (got.etag, got.last_modified, got.content_type))
