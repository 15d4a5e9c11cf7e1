"""The replay server of tests/replay.py in its own process, so that rendering pages never competes with the
process being measured for the GIL, and so that its memory never counts as ours.

    python benchmarks/_replay.py PAGE [--n N] [--seed S] [--etags 0|1] [--memo] [--now ISO]
                                      [--list-updates 0|1]

PAGE: `openai` (StatuspagePage over the recorded OpenAI history), `synthetic` (StatuspagePage over
synthetic_incidents(N), every incident in incidents.json), `incidentio` (IncidentIoPage over
incidentio_incidents()) or `incidentio-synthetic` (IncidentIoPage over synthetic_incidents(N, ids="ulid"),
the backfill benchmark's page; `--list-updates 1` makes its window lists carry each incident's updates, as
the real page's do: tests/replay.py's IncidentIoPage(window_updates=...)). Prints one JSON line (base_url, now,
the page's update times, the first incident's start) once it is ready, then serves until its standard input
closes.

Control endpoints (answered by this process, not by the page):
  /__bench/now?t=ISO   move the simulated time      /__bench/stats  {"requests", "bytes_out"}
  /__bench/reset       zero the counters
Responses of a StatuspagePage depend only on the request and the simulated time, so with --memo they are
computed once and replayed (the 20,000-incident page takes seconds to render and gzip).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import replay  # noqa: E402  (tests/replay.py)
from replay import (IncidentIoPage, ReplayServer, StatuspagePage, incidentio_incidents,  # noqa: E402
                    load_history, synthetic_incidents)

SYNTHETIC_START = datetime(2016, 1, 1, tzinfo=timezone.utc)


class _CountingWriter:
    def __init__(self, inner, counter):
        self.inner, self.counter = inner, counter

    counting = True

    def write(self, b):
        if self.counting:
            self.counter.add(len(b))
        return self.inner.write(b)

    def flush(self):
        return self.inner.flush()

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.bytes_out = 0
        self.requests = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes_out += n


class _Handler(replay._Handler):
    def setup(self):
        super().setup()
        self.wfile = _CountingWriter(self.wfile, self.server.replay.counter)

    def _dispatch(self):  # the control endpoints are not part of what a poll fetches
        self.wfile.counting = not self.path.startswith("/__bench/")
        super()._dispatch()


class BenchServer(ReplayServer):
    def __init__(self, page, *, memo: bool = False, **kw):
        super().__init__(page, **kw)
        self.counter = _Counter()
        self.memo = memo
        self._cache: dict = {}

    def start(self) -> "BenchServer":  # ReplayServer.start with a byte-counting handler
        httpd = replay._Server((self._host, self._port), _Handler)
        httpd.replay = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def _record(self, method, path, headers) -> None:  # count only: 20,000 recorded requests would pile up
        if path.startswith("/__bench/"):
            return
        with self.counter.lock:
            self.counter.requests += 1

    def _wire_response(self, h):
        split = urlsplit(h.path)
        if split.path.startswith("/__bench/"):
            return self._control(split.path, parse_qs(split.query))
        if not self.memo:
            return super()._wire_response(h)
        key = (h.command, h.path, self.now, h.headers.get("If-None-Match"), h.headers.get("If-Modified-Since"),
               replay._accepts_gzip(h.headers.get("Accept-Encoding")))
        wire = self._cache.get(key)
        if wire is None:
            wire = super()._wire_response(h)
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = wire
        return wire

    def _control(self, path, q):
        c = self.counter
        if path == "/__bench/now":
            self.now = q["t"][0]
            out = {"now": self.now.isoformat()}
        elif path == "/__bench/reset":
            with c.lock:
                c.bytes_out = c.requests = 0
            out = {}
        else:
            with c.lock:
                out = {"requests": c.requests, "bytes_out": c.bytes_out}
        return replay._Wire(200, {"Content-Type": "application/json"}, json.dumps(out).encode())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("page", choices=("openai", "synthetic", "incidentio", "incidentio-synthetic"))
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--etags", type=int, choices=(0, 1), default=None)
    ap.add_argument("--memo", action="store_true")
    ap.add_argument("--now")
    ap.add_argument("--warm", action="append", default=[], help="path to render once before reporting ready")
    ap.add_argument("--list-updates", type=int, choices=(0, 1), default=None)
    a = ap.parse_args()
    if a.page == "openai":
        page = StatuspagePage(load_history("openai"), etags=True if a.etags is None else bool(a.etags))
    elif a.page in ("synthetic", "incidentio-synthetic"):
        # the monitor refuses timestamps in its own future: end the synthetic history a day before today
        ids = "ulid" if a.page == "incidentio-synthetic" else "statuspage"
        incs = synthetic_incidents(a.n, SYNTHETIC_START, seed=a.seed, ids=ids)
        span = max(u.posted for i in incs for u in i.updates) - SYNTHETIC_START
        start = datetime.now(timezone.utc).replace(microsecond=0) - span - timedelta(days=1)
        incs = synthetic_incidents(a.n, start, seed=a.seed, ids=ids)
        if ids == "ulid":
            kw = {} if a.list_updates is None else {"window_updates": bool(a.list_updates)}
            page = IncidentIoPage(incs, etags=bool(a.etags), **kw)
        else:
            page = StatuspagePage(incs, api_limit=len(incs), etags=True if a.etags is None else bool(a.etags))
    else:
        page = IncidentIoPage(incidentio_incidents(), etags=bool(a.etags))
    srv = BenchServer(page, memo=a.memo, now=a.now).start()
    if a.warm:  # render (and gzip) the big responses now, not inside the measured poll
        import httpx

        with httpx.Client(headers={"Accept-Encoding": "gzip"}, timeout=None) as c:
            for p in a.warm:
                c.get(srv.base_url + p).raise_for_status()
    times = sorted({u.posted.isoformat() for i in page.incidents for u in i.updates})
    print(json.dumps({"base_url": srv.base_url, "now": srv.now.isoformat(), "incidents": len(page.incidents),
                      "first_started_at": min(i.started_at for i in page.incidents).isoformat(),
                      "update_times": times if len(times) < 5000 else []}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    srv.stop()


if __name__ == "__main__":
    main()
