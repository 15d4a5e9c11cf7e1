"""The service's read-only web side, end to end: the real `monitor run` serving the page, /metrics,
/status.json and /healthz while the replay server steps a real upload incident (2024-08-19 "File uploads
returning error messages", major) from open to resolved, next to a hostile incident whose title and update
carry markup. The page and the `monitor report` file are loaded in a real headless Chromium (Debian's
`chromium`); screenshots are kept under tests/artifacts/."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import db_rows, run
from replay import ReplayIncident, ReplayServer, ReplayUpdate, StatuspagePage, load_history
from test_service import config, monitor_command, service  # noqa: F401  (service: the fixture)

from monitor.config import ConfigError, load

UTC = timezone.utc
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
MAJOR = "433mh2zvfmww"                      # 2024-08-19 18:51 .. 22:02, impact major
MAJOR_TITLE = "File uploads returning error messages"
OPEN_AT = "2024-08-19T19:00:00Z"
OVER_AT = "2024-08-20T00:00:00Z"
POLL = 3.0
HOSTILE = ('File uploads failing <b id="injected-b">bold</b> <img src=x id="injected-img" '
           'onerror="document.title=\'pwned\'"> <script id="injected-script">document.title="pwned"</script> '
           '<iframe id="injected-iframe" src="javascript:alert(1)"></iframe>')
UPLOAD_COUNT_SQL = ("select count(distinct i.id) from incidents i join tags t on t.incident_id = i.id "
                    "where t.tag in ('file-upload', 'file-expired', 'data-analysis')")
# what the page charts: upload-related incidents and broad outages
CHARTED_SQL = ("select count(*) from incidents i where i.id in (select incident_id from tags where tag in "
               "('file-upload', 'file-expired', 'data-analysis')) or i.id in (select incident_id from surfaces)")
BROAD_ONLY_SQL = ("select count(*) from incidents i where i.id in (select incident_id from surfaces) and i.id not in "
                  "(select incident_id from tags where tag in ('file-upload', 'file-expired', 'data-analysis'))")


def hostile_incident() -> ReplayIncident:
    at = datetime(2024, 8, 19, 18, 40, tzinfo=UTC)
    return ReplayIncident(
        id="hostile00001", title=HOSTILE, impact="minor", components=[("chatgpt", "ChatGPT")],
        updates=[ReplayUpdate("investigating", HOSTILE + "\nsecond line", at, "h-1"),
                 ReplayUpdate("resolved", "Fixed. " + HOSTILE, at.replace(hour=21), "h-2")])


# ------------------------------------------------------------------------------------------ the browser

def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (CI installs it in .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def browse(url: str, *, dump: bool = False, screenshot: Path | None = None, width: int = 1280,
           height: int = 1600) -> str:
    """Headless Chromium on `url`: the rendered DOM (dump) or a screenshot; a fresh profile every time."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}"]
        cmd += ["--dump-dom"] if dump else [f"--screenshot={screenshot}", f"--window-size={width},{height}",
                                            "--hide-scrollbars"]
        out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    if screenshot:
        assert screenshot.stat().st_size > 10_000, f"empty screenshot {screenshot}"
        print(f"screenshot: {screenshot}")
    return out.stdout


class Dom(HTMLParser):
    """The elements (tag, attrs, inside <svg>?) and the text of a serialized DOM."""

    def __init__(self, html: str):
        super().__init__()
        self.elements: list[tuple[str, dict, bool]] = []
        self.text: list[str] = []
        self.style: list[str] = []
        self.in_style = False
        self.depth_svg = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), self.depth_svg > 0))
        self.in_style = tag == "style"
        if tag == "svg" and dict(attrs).get("class") == "chart":
            self.depth_svg += 1

    def handle_endtag(self, tag):
        self.in_style = False
        if tag == "svg" and self.depth_svg:
            self.depth_svg -= 1

    def handle_data(self, data):
        (self.style if self.in_style else self.text).append(data)

    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())

    def classes(self) -> set[str]:
        return {c for _, a, _ in self.elements for c in a.get("class", "").split()}

    def chart_marks(self) -> list[dict]:
        return [a for tag, a, in_chart in self.elements if in_chart and tag == "g"
                and "mark" in a.get("class", "").split()]


def assert_no_injection(dom: Dom) -> None:
    """The hostile markup is text on the page, never an element."""
    tags = [t for t, _, _ in dom.elements]
    assert not {"img", "script", "iframe", "b"} & set(tags), sorted(set(tags))
    assert not [a for _, a, _ in dom.elements if a.get("id", "").startswith("injected")]
    assert not [a for _, a, _ in dom.elements if any(k.startswith("on") for k in a)]
    assert '<b id="injected-b">bold</b>' in dom.all_text()        # shown as the text it is


# ---------------------------------------------------------------------------------------------- HTTP

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def answers(port: int, path: str = "/healthz") -> int | None:
    """The status of GET `path`, None while nothing listens yet."""
    try:
        return request(port, "GET", path)[0]
    except ConnectionRefusedError:
        return None


def raw(port: int, data: bytes) -> bytes:
    """Send `data` as is and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def metrics(port: int) -> dict[str, list]:
    status, headers, body = request(port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def value(families: dict, name: str, **labels) -> float:
    for fam in families.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name}{labels} in {sorted(families)}")


def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on `port`, from /proc/net/tcp and tcp6 (hex, as the kernel writes)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


def wait_until(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------- tests

def test_page_metrics_and_report_follow_an_upload_incident(tmp_path, service):
    chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    with ReplayServer(StatuspagePage(load_history("openai") + [hostile_incident()]), now=OPEN_AT) as srv:
        cfg = config(tmp_path, srv.base_url, poll_interval=POLL, extra=f'[http]\nlisten = ":{port}"\n')
        db = tmp_path / "m.db"
        m = service(cfg)
        wait_until(lambda: answers(port) == 200, 30, "/healthz 200")
        assert listening_addresses(port) == {"0100007F"}        # 127.0.0.1 only: loopback by default

        # the incident is open: /metrics, /status.json and the page say so
        fam = metrics(port)
        assert value(fam, "monitor_verdict") == 2
        assert value(fam, "monitor_upload_incidents_open") == 2          # the real one and the hostile one
        assert value(fam, "monitor_broad_outages_open", surface="chatgpt") == 0     # ChatGPT was up then
        assert value(fam, "monitor_broad_outages_open", surface="api") == 0
        assert value(fam, "monitor_info", version=__import__("monitor").__version__) == 1
        assert value(fam, "monitor_polls_total", page="openai") >= 1
        assert value(fam, "monitor_poll_failures_total", page="openai") == 0
        assert value(fam, "monitor_source_fetch_failures_total", page="openai", source="/history.atom") == 0
        assert value(fam, "monitor_outbox_messages", notifier="log", state="failed") == 0
        assert 0 < time.time() - value(fam, "monitor_last_successful_poll_timestamp_seconds", page="openai") \
            < 2 * POLL + 5
        assert not [f for f in fam if f.startswith("monitor_probe")]     # no probe configured: no probe metrics
        status, _, body = request(port, "GET", "/status.json")
        served = json.loads(body)
        cli = json.loads(run(cfg, "status", "--json", ok=None).stdout)
        assert status == 200 and served["verdict"] == "wait" and served["exit_code"] == 2
        assert {k: served[k] for k in ("verdict", "exit_code", "reason", "incidents")} == \
            {k: cli[k] for k in ("verdict", "exit_code", "reason", "incidents")}

        dom = Dom(browse(f"http://127.0.0.1:{port}/", dump=True))
        text = dom.all_text()
        assert "WAIT" in text and MAJOR_TITLE in text
        (stored,) = db_rows(db, CHARTED_SQL)[0]
        (broad,) = db_rows(db, BROAD_ONLY_SQL)[0]
        marks = dom.chart_marks()
        assert len(marks) == stored >= 2, (len(marks), stored)
        # the broad outages of ChatGPT or the API (no upload wording) are drawn distinctly: ringed
        assert sum("broad outage of" in a["aria-label"] for a in marks) == broad >= 10, broad
        assert sum("open" in a["class"].split() for a in marks) == 2, [a["aria-label"][:90] for a in marks if "open" in a["class"].split()]
        assert_no_injection(dom)
        assert "last checked" in text and "STALE" not in text and "badge-stale" not in dom.classes()
        browse(f"http://127.0.0.1:{port}/", screenshot=ARTIFACTS / "page-1280.png")
        browse(f"http://127.0.0.1:{port}/", screenshot=ARTIFACTS / "page-390.png", width=390, height=2400)

        # read-only: anything but GET and HEAD is refused
        for method, path in (("POST", "/"), ("PUT", "/metrics"), ("DELETE", "/status.json"), ("POST", "/healthz"),
                             ("PATCH", "/nope")):
            status, headers, _ = request(port, method, path, body=b"x=1")
            assert (status, headers.get("allow")) == (405, "GET, HEAD"), (method, path)
        status, headers, body = request(port, "HEAD", "/status.json")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 100
        assert request(port, "GET", "/nope")[0] == 404

        # resolved on the page: /metrics follows within two poll intervals
        srv.now = OVER_AT
        t0 = time.monotonic()
        wait_until(lambda: (f := metrics(port)) and value(f, "monitor_verdict") == 0
                   and value(f, "monitor_upload_incidents_open") == 0, 4 * POLL, "verdict 0, open 0")
        took = time.monotonic() - t0
        assert took <= 2 * POLL, f"/metrics showed the resolution after {took:.1f} s"
        print(f"resolution on /metrics after {took:.1f} s (poll interval {POLL:g} s)")
        assert request(port, "GET", "/healthz")[0] == 200
        rc, _ = m.stop()
        assert rc == 0
        assert "Traceback" not in m.stderr

    report = tmp_path / "report.html"
    r = run(cfg, "report", "--out", str(report), "--since", "2024-06-01")
    assert r.stdout.strip() == f"wrote {report}"
    dom = Dom(report.read_text())      # self-contained: nothing to load, every link an http(s) one
    assert not [(t, a) for t, a, _ in dom.elements if t in ("link", "script", "img") or "src" in a]
    assert {a["href"].split(":")[0] for t, a, _ in dom.elements if "href" in a} == {"http"}   # the replay's
    assert "url(" not in "".join(dom.style) and "@import" not in "".join(dom.style)
    dom = Dom(browse(report.as_uri(), dump=True))
    (since_may,) = db_rows(db, f"select count(*) from ({CHARTED_SQL.replace('count(*)', 'i.started_at')}) "
                               "where started_at >= '2024-06-01'")[0]
    assert len(dom.chart_marks()) == since_may < stored
    assert not [a for a in dom.chart_marks() if "open" in a["class"].split()]
    assert_no_injection(dom)
    browse(report.as_uri(), screenshot=ARTIFACTS / "report-1280.png")


def test_healthz_503_and_page_stale_when_data_is_old(tmp_path, service):
    """A monitor whose page cannot be reached: /healthz 503, the page says STALE and UNKNOWN, never fresh."""
    port = free_port()
    dead = free_port()                      # nothing listens there
    cfg = config(tmp_path, f"http://127.0.0.1:{dead}", poll_interval=1,
                 extra=f'[http]\nlisten = "127.0.0.1:{port}"\n')
    m = service(cfg)
    m.wait_log(r"poll openai: failed", timeout=30)
    wait_until(lambda: answers(port), 10, "the listener")
    status, _, body = request(port, "GET", "/healthz")
    assert status == 503 and body.startswith(b"stale: openai"), body
    status, headers, page = request(port, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["content-security-policy"]             # default-src 'none': no script
    dom = Dom(page.decode())
    assert "UNKNOWN" in dom.all_text() and "STALE" in dom.all_text()
    assert "badge-stale" in dom.classes() and "badge-fresh" not in dom.classes()   # never shown as fresh
    # HTTP as clients really send it, and as they should not
    two = raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert two.count(b"HTTP/1.1 503 ") == 1 and two.count(b"HTTP/1.1 200 ") == 1 and b"<html" not in two
    assert raw(port, b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 503 ")
    assert raw(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431 ")
    fam = metrics(port)
    assert value(fam, "monitor_verdict") == 3 and value(fam, "monitor_page_fresh", page="openai") == 0
    assert value(fam, "monitor_poll_failures_total", page="openai") >= 1
    assert m.stop()[0] == 0


def test_port_in_use_is_one_line(tmp_path):
    """One line, exit 1, and no leader row left: the process took the lead before it failed to listen."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = config(tmp_path, "http://127.0.0.1:9", extra=f'[http]\nlisten = "127.0.0.1:{port}"\n')
        out = subprocess.run([*monitor_command(), "--config", str(cfg), "run"], capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"Error: {cfg}: http.listen: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in out.stderr
    assert db_rows(tmp_path / "m.db", "select count(*) from leader") == [(0,)]


@pytest.mark.parametrize("listen, address", [
    ("127.0.0.1:8787", ("127.0.0.1", 8787)),
    ("8787", ("127.0.0.1", 8787)),
    (":9100", ("127.0.0.1", 9100)),
    ("[::1]:8787", ("::1", 8787)),
    ("0.0.0.0:8787", ("0.0.0.0", 8787)),          # another host only when written
    ("monitor.example.org:80", ("monitor.example.org", 80)),
])
def test_listen_addresses(tmp_path, listen, address):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[http]\nlisten = "{listen}"\n')
    assert load(cfg).http.address == address
    assert load(None).http is None                 # no [http]: no listener


@pytest.mark.parametrize("listen, reason", [
    ("::1:8787", "write an IPv6 address in brackets, such as [::1]:8787"),
    ("127.0.0.1:0", "'127.0.0.1:0' is not host:port with a port from 1 to 65535, such as 127.0.0.1:8787"),
    ("localhost", "'localhost' is not host:port with a port from 1 to 65535, such as 127.0.0.1:8787"),
    ("bad host:80", "'bad host' is not a host name or IP address"),
])
def test_bad_listen_is_one_line(tmp_path, listen, reason):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[http]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError) as err:
        load(cfg)
    assert str(err.value) == f"{cfg}: http.listen: {reason}"


def test_probe_failures_are_drawn_on_the_incidents_time_axis(tmp_path, replay):
    """Where the store holds probe results, failed probes are marks on the same time axis as the page's
    incidents (here the day before the 2024-08-19 incident started), and /metrics counts them.
    The results are written straight into the probe's table, as the probe of `monitor run` stores them."""
    import sqlite3

    from monitor import db as store
    from monitor.web.metrics import PollCounts, registry
    from prometheus_client import generate_latest

    cfg = config(tmp_path, replay.base_url, extra='[probe]\napi_key_env = "TEST_PROBE_KEY"\n')
    run(cfg, "poll")
    con = sqlite3.connect(tmp_path / "m.db")
    with con:
        con.executemany("insert into probe_results (started_at, finished_at, outcome, failure_class, detail)"
                        " values (?, ?, ?, ?, ?)", [
            ("2024-05-01 10:00:00.000000", "2024-05-01 10:00:01.000000", "failed", "openai", "upload: HTTP 503"),
            ("2024-08-18 18:21:00.000000", "2024-08-18 18:21:01.000000", "failed", "openai", "upload: HTTP 500"),
            ("2024-08-18 18:26:00.000000", "2024-08-18 18:26:01.000000", "failed", "openai", "upload: <b>429</b>"),
            ("2024-08-19 18:31:00.000000", "2024-08-19 18:31:01.000000", "ok", None, None)])
    con.close()
    report = tmp_path / "report.html"
    run(cfg, "report", "--out", str(report), "--since", "2024-06-01")
    dom = Dom(report.read_text())
    probes = [a for t, a, in_chart in dom.elements if in_chart and t == "line" and a.get("class") == "probe"]
    assert len(probes) == 2
    assert "probe failed 2024-08-18 18:21 UTC: OpenAI's side: upload: HTTP 500" in dom.all_text()
    assert "probe failed 2024-08-18 18:26 UTC: OpenAI's side: upload: <b>429</b>" in dom.all_text()  # text, not markup
    shapes = [(t, a) for t, a, in_chart in dom.elements if in_chart]
    i = next(n for n, (t, a) in enumerate(shapes) if t == "g" and MAJOR_TITLE in a.get("aria-label", ""))
    square = next(a for t, a in shapes[i:] if t == "rect")
    incident_x = float(square["x"]) + 5                              # the major incident's square
    assert all(float(p["x1"]) < incident_x for p in probes)           # the probe knew first: drawn left of it

    settings = load(cfg)
    engine = store.make_engine(settings.database_url(), readonly=True)
    try:
        text = generate_latest(registry(settings, engine, PollCounts())).decode()
    finally:
        engine.dispose()
    fam = {f.name: f for f in text_string_to_metric_families(text)}
    assert value(fam, "monitor_probe_results_total", result="openai") == 3
    assert value(fam, "monitor_probe_results_total", result="ok") == 1
    assert value(fam, "monitor_probe_results_total", result="user") == 0         # present at 0 from the start


def test_chart_scales():
    """The chart's arithmetic, with values worked out by hand: x is linear in time from the first month to
    now, y is log-scaled duration from 1 min (bottom, y=190) to 30 days (top, y=14), clamped at both ends;
    one bar per month, as tall as its share of the busiest month."""
    from monitor.web.page import chart

    start = datetime(2024, 1, 1, tzinfo=UTC)
    now = datetime(2024, 3, 1, tzinfo=UTC)                    # 60 days: 1 day = (708 - 56) / 60 = 10.87 units

    def inc(day: int, seconds, impact="minor", is_open=False):
        return {"started": start.replace(day=day), "seconds": seconds, "duration_words": "", "impact": impact,
                "open": is_open, "link": None, "started_words": "", "title": "t", "broad": False, "surfaces": []}

    c = chart([inc(1, 60), inc(11, 60 * 60 * 24 * 30), inc(11, 5), inc(31, 10 ** 9, "critical", True),
               inc(21, 60 * 43200 ** 0.5)], [], now, None)   # sqrt(43200) minutes: halfway up the log axis
    got = [(m["x"], m["y"], m["shape"], m["open"]) for m in c["marks"]]
    assert got == [(56.0, 190.0, "circle", False), (164.7, 14.0, "circle", False), (164.7, 190.0, "circle", False),
                   (273.3, 102.0, "circle", False), (382.0, 14.0, "diamond", True)]
    assert [(m["n"], m["h"]) for m in c["months"]] == [(5, 42.0), (0, 0.0)]
    assert [t["text"] for t in c["ticks"]] == ["Jan 2024", "Feb"]


@pytest.mark.parametrize("first_poll, first_seen, late", [
    ("2024-08-19T18:00:00Z", "2024-08-19T19:08:30Z", "17 min"),   # watching before it started: 17.5 min late
    ("2024-08-19T18:51:00Z", "2024-08-19T18:51:00Z", "0 s"),
    ("2024-08-19T19:00:00Z", "2024-08-19T19:00:05Z", ""),         # started watching after it began: unknown
    (None, "2024-08-19T19:00:05Z", ""),
])
def test_posted_late_only_where_known(first_poll, first_seen, late):
    from monitor.records import parse_iso as parse_time
    from monitor.web.page import incident_view

    row = {"page": "openai", "id": "x", "title": "t", "url": None, "status": "resolved", "impact": "major",
           "tags": ["file-upload"], "started_at": "2024-08-19T18:51:00Z", "resolved_at": "2024-08-19T22:02:00Z"}
    got = incident_view(row, (parse_time(first_seen), parse_time(first_poll)), datetime(2024, 9, 1, tzinfo=UTC))
    assert (got["late_words"], got["duration_words"]) == (late, "3 h 11 min")
