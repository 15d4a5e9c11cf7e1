"""In-process measurements for benchmarks/run.py, each run in a child process of its own:

    python -c "import sys; sys.path.insert(0, 'benchmarks'); import _workers; _workers.main()" NAME JSON_ARGS

prints one JSON line. Few imports at the top: the memory figure is read in these processes.
"""
from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path


def median(xs):
    return statistics.median(xs) if xs else None


def proc_rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")



def _setup(cfg: str):
    from monitor import config, db, migrate
    from monitor.cli import setup_logging
    from monitor.tags import build_rules

    settings = config.load(cfg, warn=lambda m: None)
    setup_logging(settings.log.level)
    url = settings.database_url()
    engine = db.make_engine(url)
    migrate.upgrade(url, engine)
    return settings, engine, build_rules(settings.tags)


def w_cpu(a: dict) -> dict:
    """CPU per unchanged poll through the daemon's own poll path (Service.poll_job, logging included),
    against CPU per bare httpx GET with one reused client."""
    import httpx

    from monitor.service import Service
    from monitor.sources.http import client

    settings, engine, rules = _setup(a["config"])
    name = settings.pages[0].name
    out = {}

    async def go():
        from types import SimpleNamespace

        from monitor.leader import LeaderLock
        from monitor.web.metrics import PollCounts

        svc = Service(settings, engine, rules)
        # as in `monitor run`: the leader lock checked once per interval (the `lead` job), and the web
        # listener's poll counters updated after each poll
        svc.lock, svc.sched = LeaderLock(settings.database_url()), SimpleNamespace(running=False)
        svc.web = SimpleNamespace(counts=PollCounts())
        url = a["get_url"]
        async with client() as http, httpx.AsyncClient() as bare:
            svc.http = http
            await svc.lead()
            assert svc.leading, "the benchmark's service could not take the leader lock"
            etag = (await bare.get(url)).headers.get("etag")
            for _ in range(a["warm"]):
                await svc.lead()
                await svc.poll_job(name)
                await bare.get(url)
                await bare.get(url, headers={"If-None-Match": etag})
            polls, gets, gets304 = [], [], []
            w0 = time.perf_counter()
            for _ in range(a["n"]):   # interleaved, so that both see the same machine
                c0 = time.process_time()
                await svc.lead()
                await svc.poll_job(name)
                c1 = time.process_time()
                r = await bare.get(url)
                c2 = time.process_time()
                r304 = await bare.get(url, headers={"If-None-Match": etag})
                c3 = time.process_time()
                polls.append(c1 - c0)
                gets.append(c2 - c1)
                gets304.append(c3 - c2)
            out["loop_wall_ms"] = (time.perf_counter() - w0) / a["n"] * 1e3
            out["poll_cpu_ms"] = median(polls) * 1e3
            out["poll_cpu_ms_mean"] = statistics.fmean(polls) * 1e3
            out["outcome"] = svc.outcomes.get(name)
            out["get_cpu_ms"] = median(gets) * 1e3
            out["get_cpu_ms_mean"] = statistics.fmean(gets) * 1e3
            out["get_status"], out["get_bytes"] = r.status_code, len(r.content)
            out["get304_cpu_ms"] = median(gets304) * 1e3
            out["get304_status"] = r304.status_code

    asyncio.run(go())
    return out


def w_mem(a: dict) -> dict:
    """`monitor run` itself, in this process: cli -> service.run -> APScheduler -> Service.poll_job, logging
    included. Only the page's poll_interval is set below the config minimum of 1 s (model_copy skips the
    validation), so that 10,000 polls take minutes instead of hours. RSS is read after poll 1, 10, 100,
    1,000, 2,000, ... and the service stops itself after the last one."""
    import resource

    from monitor import cli, config, service

    n = a["n"]
    marks = sorted({1, 10, 100, 1000, n} | set(range(1000, n + 1, 1000)))
    series: dict[int, float] = {}
    real_load = config.load

    def load(*args, **kw):
        st = real_load(*args, **kw)
        return st.model_copy(update={"pages": tuple(p.model_copy(update={"poll_interval": a["interval"]})
                                                    for p in st.pages)})

    class Counting(service.Service):
        polls = 0
        outcome = None

        async def poll_job(self, name: str) -> None:
            await super().poll_job(name)
            Counting.polls += 1
            Counting.outcome = self.outcomes.get(name)
            if Counting.polls in marks:
                series[Counting.polls] = round(proc_rss_mb(), 2)
            if Counting.polls >= n:
                self.stopping.set()

    if a.get("slack_webhook"):  # Slack's webhook host, replaced by a receiver on 127.0.0.1 (bench only)
        from apprise.plugins.slack import NotifySlack

        NotifySlack.webhook_url = a["slack_webhook"]
    config.load = load
    service.Service = Counting
    t0 = time.perf_counter()
    try:
        cli.cli(["--config", a["config"], "run"], prog_name="monitor", standalone_mode=False)
    except SystemExit:
        pass
    return {"rss_mb": series, "seconds": time.perf_counter() - t0, "polls": Counting.polls,
            "outcome": Counting.outcome, "interval_s": a["interval"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "apprise_plugin_modules": sum(1 for m in sys.modules if m.startswith("apprise.plugins.")
                                          and m.count(".") == 2)}


def w_memparts(a: dict) -> dict:
    """What each part of `monitor run` costs: RSS after importing each part in turn, then after loading the
    configured notifiers, then after apprise's own lookup of every plugin (what a URL of a scheme outside
    channels._PLUGINS costs)."""
    import importlib

    steps = [("python", None), ("click + monitor.cli", "monitor.cli"), ("pydantic + monitor.config", "monitor.config"),
             ("SQLAlchemy ORM + models", "monitor.models"), ("httpx", "httpx"), ("feedparser", "feedparser"),
             ("APScheduler", "apscheduler.schedulers.asyncio"), ("service, poll, store, sources", "monitor.service"),
             ("apprise", "apprise")]
    out, prev = [], proc_rss_mb()
    for label, module in steps:
        if module:
            importlib.import_module(module)
        rss = proc_rss_mb()
        out.append({"part": label, "rss_mb": round(rss, 1), "rss_added_mb": round(rss - prev, 1)})
        prev = rss
    from monitor import config
    from monitor.notify import channels

    settings = config.load(a["config"])
    channels.validate(settings.notifiers)
    chans = [channels.channel_for(n) for n in settings.notifiers]
    for label, fn in ((f"notifiers loaded ({', '.join(type(c).__name__ for c in chans)})", None),
                      ("apprise's lookup of every plugin (any other scheme)", lambda: channels.known_scheme("json")),
                      ("Alembic (`monitor run` migrates in a child process: not held)",
                       lambda: importlib.import_module("alembic.command"))):
        if fn:
            fn()
        rss = proc_rss_mb()
        out.append({"part": label, "rss_mb": round(rss, 1), "rss_added_mb": round(rss - prev, 1),
                    "apprise_plugin_modules": sum(1 for m in sys.modules if m.startswith("apprise.plugins.")
                                                  and m.count(".") == 2)})
        prev = rss
    return {"parts": out, "errors": [c.error for c in chans if c.error]}


def w_history(a: dict) -> dict:
    """`monitor history` run in-process after its imports: the query and the JSON, without the start-up."""
    import contextlib
    import io

    from monitor import cli, config, db, queries, reader, tags  # noqa: F401  (what the command imports)

    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        cli.cli(["--config", a["config"], "history", "--json", *a["args"]], prog_name="monitor",
                standalone_mode=False)
    return {"seconds": time.perf_counter() - t0, "bytes": len(buf.getvalue())}


def w_first(a: dict) -> dict:
    """The first poll of a big page, as `monitor poll` runs it (poll_all), on a freshly migrated store."""
    import resource

    from monitor.poll import poll_all

    t = time.perf_counter()
    settings, engine, rules = _setup(a["config"])
    setup_s = time.perf_counter() - t
    t0, c0 = time.perf_counter(), time.process_time()
    results = asyncio.run(poll_all(settings, engine, rules))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "setup_s": setup_s, "summary": [r.summary() for r in results],
            "ok": all(r.ok for r in results), "new": sum(r.new for r in results),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def w_firstbase(a: dict) -> dict:
    """Baseline: stdlib only. GET the same incidents.json (gzip), json.loads, and insert the same incidents
    and their updates into SQLite (same WAL/synchronous settings) in one transaction."""
    import gzip
    import resource
    import sqlite3
    import urllib.request

    t0, c0 = time.perf_counter(), time.process_time()
    req = urllib.request.Request(a["url"], headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=600) as r:
        raw = r.read()
        if r.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
    data = json.loads(raw)
    con = sqlite3.connect(a["db"], isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.executescript("""
        CREATE TABLE incidents (id INTEGER PRIMARY KEY, page_incident_id TEXT UNIQUE, title TEXT, url TEXT,
            status TEXT, impact TEXT, started_at TEXT, resolved_at TEXT, updated_at TEXT);
        CREATE TABLE updates (id INTEGER PRIMARY KEY, incident_id INTEGER REFERENCES incidents(id),
            page_update_id TEXT, status TEXT, body TEXT, published_at TEXT);
        CREATE INDEX ix_updates_incident ON updates(incident_id);""")
    con.execute("BEGIN IMMEDIATE")
    n_upd = 0
    for inc in data["incidents"]:
        cur = con.execute("INSERT INTO incidents (page_incident_id, title, url, status, impact, started_at, "
                          "resolved_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                          (inc["id"], inc["name"], inc.get("shortlink"), inc["status"], inc["impact"],
                           inc.get("started_at") or inc.get("created_at"), inc.get("resolved_at"),
                           inc.get("updated_at")))
        rows = [(cur.lastrowid, u["id"], u["status"], u["body"], u.get("display_at") or u["created_at"])
                for u in inc["incident_updates"]]
        n_upd += len(rows)
        con.executemany("INSERT INTO updates (incident_id, page_update_id, status, body, published_at) "
                        "VALUES (?,?,?,?,?)", rows)
    con.execute("COMMIT")
    con.close()
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "incidents": len(data["incidents"]), "updates": n_upd, "json_mb": len(raw) / 1e6,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def w_backfillbase(a: dict) -> dict:
    """Baseline of the backfill: stdlib only. GET the same /proxy/<host>/incidents?start_at&end_at windows the
    monitor asks for (90 days each, newest first), json.loads, and insert the incidents and their updates into
    SQLite (WAL, synchronous=NORMAL) in one transaction; an entry whose list item carries no updates costs one
    GET of its timeline, as it does the monitor."""
    import gzip
    import resource
    import sqlite3
    import urllib.request
    from datetime import datetime, timedelta, timezone

    t0, c0 = time.perf_counter(), time.process_time()
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    since, end = datetime.fromisoformat(a["since"]), datetime.now(timezone.utc)
    windows = []
    while end > since:
        start = max(since, end - timedelta(days=90))
        windows.append((start, end))
        end = start

    def get(path):  # gzip offered, as the monitor does (and so both hit the replay server's memo)
        req = urllib.request.Request(a["base_url"] + path, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=600) as r:
            raw = r.read()
            return json.loads(gzip.decompress(raw) if r.headers.get("Content-Encoding") == "gzip" else raw)

    con = sqlite3.connect(a["db"], isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.executescript("""
        CREATE TABLE incidents (id INTEGER PRIMARY KEY, page_incident_id TEXT UNIQUE, title TEXT, status TEXT,
            impact TEXT, started_at TEXT, updated_at TEXT);
        CREATE TABLE updates (id INTEGER PRIMARY KEY, incident_id INTEGER REFERENCES incidents(id),
            page_update_id TEXT, status TEXT, body TEXT, published_at TEXT);
        CREATE INDEX ix_updates_incident ON updates(incident_id);""")
    requests = n_inc = n_upd = without = 0
    con.execute("BEGIN IMMEDIATE")
    for start, end in windows:
        listed = get(f"/proxy/{a['host']}/incidents?start_at={start.strftime(fmt)}&end_at={end.strftime(fmt)}")
        requests += 1
        for inc in listed["incidents"]:
            updates = inc.get("updates")
            if not updates:
                without += 1
                updates = get(f"/proxy/{a['host']}/incidents/{inc['id']}")["incident"]["updates"]
                requests += 1
            cur = con.execute("INSERT INTO incidents (page_incident_id, title, status, impact, started_at, "
                              "updated_at) VALUES (?,?,?,?,?,?)",
                              (inc["id"], inc["name"], inc["status"], inc.get("current_worst_impact"),
                               inc.get("published_at"), inc.get("last_update_at")))
            rows = [(cur.lastrowid, u["id"], u.get("to_status"), u.get("message_string") or "", u["published_at"])
                    for u in updates]
            con.executemany("INSERT INTO updates (incident_id, page_update_id, status, body, published_at) "
                            "VALUES (?,?,?,?,?)", rows)
            n_inc += 1
            n_upd += len(rows)
    con.execute("COMMIT")
    con.close()
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "windows": len(windows),
            "requests": requests, "incidents": n_inc, "updates": n_upd, "entries_without_updates": without,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def w_bytes(a: dict) -> dict:
    """Bytes the server sends per idle poll (headers and body, as counted by the server), and the statuses;
    then the same URLs fetched without validators (the full response size)."""
    import urllib.request

    from monitor.poll import poll_page
    from monitor.sources.http import client

    settings, engine, rules = _setup(a["config"])
    ps = settings.pages[0]
    ctl = a["control"]

    def stats():
        with urllib.request.urlopen(ctl + "/__bench/stats", timeout=30) as r:
            return json.loads(r.read())

    seen = []

    async def hook(resp):
        seen.append((resp.request.url.path, resp.status_code))

    async def go():
        async with client() as http:
            http.event_hooks["response"] = [hook]
            first = await poll_page(settings, ps, engine, http, rules)
            await poll_page(settings, ps, engine, http, rules)
            seen.clear()
            s0 = stats()
            for _ in range(a["polls"]):
                r = await poll_page(settings, ps, engine, http, rules)
            s1 = stats()
            idle = list(seen)
            paths = sorted({p for p, _ in idle})
            s2 = stats()
            for _ in range(a["polls"]):
                for p in paths:
                    await http.get(ps.base_url + p)
            s3 = stats()
            stable = []    # paths the server answers 304 for, given the validator it just sent
            for p in paths:
                e = (await http.get(ps.base_url + p)).headers.get("etag")
                if e and (await http.get(ps.base_url + p, headers={"If-None-Match": e})).status_code == 304:
                    stable.append(p)
            n = a["polls"]
            return {"first": first.summary(), "idle_outcome": r.summary(), "paths": paths,
                    "idle_statuses": sorted({f"{p} {s}" for p, s in idle}),
                    "idle_requests_per_poll": (s1["requests"] - s0["requests"]) / n,
                    "idle_bytes_per_poll": (s1["bytes_out"] - s0["bytes_out"]) / n,
                    "full_bytes_per_poll": (s3["bytes_out"] - s2["bytes_out"]) / n,
                    "all_304": bool(idle) and all(s == 304 for _, s in idle),
                    "paths_server_can_304": stable,
                    "all_304_where_possible": bool(idle) and all(s == 304 for p, s in idle if p in stable)}

    return asyncio.run(go())


WORKERS = {"cpu": w_cpu, "mem": w_mem, "memparts": w_memparts, "history": w_history, "first": w_first, "firstbase": w_firstbase, "backfillbase": w_backfillbase, "bytes": w_bytes}



def main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(WORKERS[name](args)))
