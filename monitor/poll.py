"""One poll of each configured page: ask the page's kind what to fetch, fetch it, hand each answer to the
kind to read, merge, and store the result and its messages in one transaction. One failing source or page
never stops the others; a poll that fails leaves the store as it was."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitor import page_state
from monitor.config import PageSettings, Settings
from monitor.db import Store, StoreError, describe_error, transaction, write_failure
from monitor.merge import merge
from monitor.records import IncidentRec, SourceResult, now_utc
from monitor.sources import detect, kind as page_kind
from monitor.sources.common import Context, PageKind, ParseError, by_cause, cause, one_line
from monitor.sources.http import FetchError, Fetched, client, fetch

log = logging.getLogger("monitor.poll")


def _store():
    """monitor.store, and with it the ORM and the models: imported only when a poll has something to read or
    write beyond the page's row (a poll that learns nothing new never needs them; start-up time)."""
    from monitor import store

    return store

MAX_DETAILS_PER_POLL = 30
CATCH_UP_PER_POLL = 5
DETAIL_CONCURRENCY = 6
WARN_AFTER_FAILURES = 3
BACKOFF_CAP = 900                      # seconds: a failing page is still tried every 15 minutes
TIMELINE_RETRY = timedelta(hours=1)    # an incident whose timeline failed is not asked again sooner


@dataclass
class PageResult:
    page: str
    ok: bool = False
    kind: str | None = None
    sources_ok: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    new: int = 0
    changed: int = 0
    queued: int = 0
    unchanged: bool = False
    skipped: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        if self.skipped:
            return f"{self.page}: skipped: {self.skipped}"
        if not self.ok:
            return f"{self.page}: failed: {'; '.join(self.errors) or 'no source answered'}"
        parts = [f"{self.page}: ok ({len(self.sources_ok)} source(s))"]
        parts.append("unchanged" if not (self.new or self.changed) else f"{self.new} new, {self.changed} changed")
        if self.queued:
            parts.append(f"{self.queued} message(s) queued")
        if self.errors:
            parts.append("warnings: " + "; ".join(self.errors))
        return ", ".join(parts)


_VOLATILE = re.compile(rb"<(lastBuildDate|updated|pubDate)>[^<]*</\1>")


def body_hash(path: str, body: bytes) -> str:
    """Hash that ignores a feed's own timestamps, which some pages restamp on every request."""
    if path.endswith((".atom", ".rss", ".xml")):
        cut = min((i for i in (body.find(b"<entry"), body.find(b"<item")) if i >= 0), default=len(body))
        body = _VOLATILE.sub(b"", body[:cut]) + body[cut:]
    return hashlib.sha256(body).hexdigest()


class _Poll:
    """The state of one page's poll while it runs."""

    def __init__(self, settings: Settings, ps: PageSettings, store, http, rules):
        # `store`: a db.Store, or an engine (the service's, the tests'): the page's row goes through it, and
        # the engine (SQLAlchemy) is made only when something is to be written
        self.store = Store.of(store)
        self.settings, self.ps, self.http, self.rules = settings, ps, http, rules
        self.max_bytes = int(ps.max_response_mb * (1 << 20))
        self.result = PageResult(page=ps.name)
        self.retry_after: datetime | None = None
        self.waiting: dict[str, int] = {}      # paths requested and not answered yet
        self.ctx = Context(base_url=ps.base_url, host=ps.host, now=now_utc())
        self.time_zone: str | None = None      # the page's zone, when this poll learnt it
        self.timeline_failed: dict[str, str] = {}   # timeline path -> cause, to back off
        self.timeline_ok: list[str] = []

    @property
    def engine(self):
        return self.store.engine

    def url(self, path: str) -> str:
        return self.ps.base_url + path

    def known(self):
        """page_state.known_page() for this page: its row, validators and the incidents to catch up on."""
        return page_state.known_page(self.store, self.ps.name, self.ps.base_url,
                                CATCH_UP_PER_POLL + MAX_DETAILS_PER_POLL)

    async def get(self, path: str, state=None) -> Fetched:
        key = path.split("?", 1)[0]
        self.waiting[key] = self.waiting.get(key, 0) + 1
        try:
            ans = await fetch(self.http, self.url(path), etag=state.etag if state else None,
                              last_modified=state.last_modified if state else None,
                              max_bytes=self.max_bytes, deadline=self.ps.deadline)
        except asyncio.CancelledError:
            raise                       # the poll gave up waiting: it stays in `waiting` for late()
        except BaseException as exc:
            self._answered(key)
            if isinstance(exc, FetchError) and exc.retry_after and (
                    self.retry_after is None or exc.retry_after > self.retry_after):
                self.retry_after = exc.retry_after
            raise
        self._answered(key)
        return ans

    def _answered(self, key: str) -> None:
        self.waiting[key] -= 1
        if not self.waiting[key]:
            del self.waiting[key]

    def late(self) -> str:
        """Why the poll's deadline passed: the paths still unanswered."""
        if not self.waiting:
            return f"the poll took longer than its {self.ps.deadline:g} s deadline"
        paths = sorted(self.waiting)
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        return f"no answer within the poll's {self.ps.deadline:g} s deadline from {shown}"


async def poll_page(settings: Settings, ps: PageSettings, engine, http, rules, *, backfill: bool = True,
                    force: bool = False, ignore_backoff: bool = False) -> PageResult:
    """Poll one page. Never raises for a page's own failures: they are in the result and in `pages`. A store
    that cannot be written (disk full, read-only, locked) fails this page's poll with one line; nothing is
    half-written (each write is one transaction) and the next poll tries again. Anything else that goes
    wrong (a bug met on odd input) fails this page alone, counted and backed off like any failure.
    `ignore_backoff`: poll even while our own back-off after failed polls runs (a service's first poll);
    `force`: also while the page's Retry-After runs (`monitor poll --force`).
    The store work runs in worker threads (to_thread), never on the event loop: a store another process
    keeps locked holds up this poll only, not the loop's other work (the web listener, the watchdog)."""
    started = time.monotonic()
    p = _Poll(settings, ps, engine, http, rules)
    try:
        return await _poll_page(p, started, backfill, force, ignore_backoff)
    except StoreError as exc:
        return _failed(p, started, str(exc))
    except Exception as exc:  # noqa: BLE001 - one page's failure never hides another page's result
        if describe_error(exc) is not None:     # the database's (SQLAlchemy's or sqlite3's)
            return _failed(p, started, write_failure(settings.database_url(), exc))
        log.exception("page %s: poll failed", ps.name)
        res = _failed(p, started, f"poll failed ({type(exc).__name__}: {one_line(exc)})")
        try:
            known = await asyncio.to_thread(p.known)
            if known is not None:
                await asyncio.to_thread(_record_failure, p, known[0], now_utc())
        except Exception as store_exc:  # noqa: BLE001 - a store that fails too: the page's failure is told
            if describe_error(store_exc) is None:
                raise
        return res


def _failed(p: _Poll, started: float, why: str) -> PageResult:
    res = p.result
    res.ok, res.skipped = False, None
    res.errors.append(why)
    res.seconds = time.monotonic() - started
    return res


async def _poll_page(p: _Poll, started: float, backfill: bool, force: bool, ignore_backoff: bool) -> PageResult:
    settings, ps, store, http, rules = p.settings, p.ps, p.store, p.http, p.rules
    res = p.result
    now = p.ctx.now
    known = await asyncio.to_thread(_known_or_created, p)
    page_id, stored_kind, first_poll, not_before, states, catch_up, time_zone, hold = known
    p.ctx = Context(ps.base_url, ps.host, now, time_zone)
    name = ps.kind if ps.kind != "auto" else stored_kind
    if not_before and not_before > now and not force and not (
            ignore_backoff and hold.ours(ps.poll_interval, BACKOFF_CAP)):
        res.skipped = hold.words(ps.poll_interval, BACKOFF_CAP)
        return res
    fetched = None
    details: list[IncidentRec] = []
    end = asyncio.get_running_loop().time() + ps.deadline
    try:
        async with asyncio.timeout_at(end):
            fetched = await _fetch_sources(p, name, states, now, end)
    except TimeoutError:
        res.errors.append(p.late())
        fetched = None
    if fetched and fetched[0].timelines:
        # timelines in the time left; what the list sources said is kept when they do not all arrive
        try:
            async with asyncio.timeout_at(end):
                await _fetch_timelines(p, fetched[0], page_id, _group(fetched[1]), states, now,
                                       catch_up=catch_up, out=details)
        except TimeoutError:
            res.errors.append("incident timelines: " + p.late())
        res.errors += by_cause("timelines", list(p.timeline_failed.values()))
    if not fetched or not res.sources_ok:
        res.ok = False
        await asyncio.to_thread(_record_failure, p, page_id, now)
        res.seconds = time.monotonic() - started
        return res
    kind, parsed, new_states, comps = fetched
    res.kind, res.ok = kind.name, True
    await asyncio.to_thread(_apply, p, page_id, parsed, details, new_states, comps, first_poll, now)
    if backfill and first_poll and ps.history_days > 0 and kind.history:
        try:
            bf = await run_backfill(settings, ps, store, http, rules, since=now - timedelta(days=ps.history_days))
            res.errors += [f"backfill: {e}" for e in bf.errors]
        except Exception as exc:  # noqa: BLE001 - the poll itself succeeded; `monitor backfill` retries
            res.errors.append(f"backfill: {type(exc).__name__}: {one_line(exc)}")
    res.seconds = time.monotonic() - started
    return res


async def _fetch_sources(p: _Poll, name, states, now, end: float):
    """Fetch the paths the page's kind asks for and have it read each answer. A source still unanswered
    shortly before the poll's deadline (`end`, loop time) counts as failed; the sources that did answer
    are used."""
    res = p.result
    if name is None:
        name = await _detect(p)
        if name is None:
            return None
    kind = page_kind(name)
    paths = kind.paths({k: st.fetched_at for k, st in states.items()}, now)
    loop = asyncio.get_running_loop()
    tasks = [asyncio.ensure_future(p.get(path, states.get(path))) for path in paths]
    try:
        _done, pending = await asyncio.wait(tasks, timeout=max(0.0, end - loop.time() - 0.1))
    finally:
        for t in tasks:
            t.cancel()                  # no-op for those done; all of them when this poll is cancelled
    if pending:
        await asyncio.wait(pending)
    p.waiting.clear()
    answers = [FetchError(f"no answer from {p.url(path)} within the poll's {p.ps.deadline:g} s deadline")
               if t in pending else (t.exception() or t.result()) for path, t in zip(paths, tasks)]
    parsed: dict[str, SourceResult] = {}
    new_states: dict[str, tuple] = {}
    comps = None
    # the components' answer first: it may name the page's time zone, which the feed's times need
    order = sorted(zip(paths, answers), key=lambda pa: pa[0] != kind.components_path)
    for path, ans in order:
        if isinstance(ans, FetchError):
            res.errors.append(str(ans))
            continue
        if isinstance(ans, Exception):   # an answer we could not handle fails its source only
            log.warning("page %s: %s: %s: %s", p.ps.name, path, type(ans).__name__, one_line(ans))
            res.errors.append(f"{p.url(path)}: unreadable answer ({type(ans).__name__}: {one_line(ans)})")
            continue
        if isinstance(ans, BaseException):
            raise ans
        if ans.status == 304:
            res.sources_ok.append(path)
            continue
        digest = body_hash(path, ans.body)
        old = states.get(path)
        if old is not None and old.body_hash == digest:
            # same content: nothing to parse or write (validators that change with every response,
            # as on pages that restamp their feeds, would never earn a 304 anyway)
            res.sources_ok.append(path)
            continue
        try:
            out = kind.read(path, ans.body, ans.content_type, p.ctx)
        except ParseError as exc:
            res.errors.append(f"{path}: {exc}")
            continue
        res.sources_ok.append(path)
        res.errors.extend(f"{path}: {w}" for w in out.extra.get("warnings", ()))
        if out.extra.get("time_zone") and out.extra["time_zone"] != p.ctx.time_zone:
            p.time_zone = out.extra["time_zone"]
            p.ctx = Context(p.ctx.base_url, p.ctx.host, p.ctx.now, p.time_zone)
        new_states[path] = (ans.etag, ans.last_modified, digest)
        if path == kind.components_path:
            comps = out
        else:
            parsed[path] = out
    res.sources_ok.sort(key=paths.index)
    if not res.sources_ok or (res.sources_ok == [kind.components_path]):
        res.sources_ok.clear()
        return None
    return kind, parsed, new_states, comps


async def _detect(p: _Poll) -> str | None:
    summary = feed = None
    try:
        summary = (await p.get("/api/v2/summary.json")).body
    except FetchError as exc:
        p.result.errors.append(str(exc))
    name = detect(summary, None)
    if name is None:
        try:  # both kinds serve it; incident.io names itself as the generator
            feed = (await p.get("/history.atom")).body
        except FetchError as exc:
            p.result.errors.append(str(exc))
        name = detect(None, feed)
    if name is None:
        p.result.errors.append("cannot tell what kind of status page this is")
    return name


def _group(parsed) -> dict[str, list[IncidentRec]]:
    by_id: dict[str, list[IncidentRec]] = defaultdict(list)
    for out in (parsed.values() if isinstance(parsed, dict) else parsed):
        for rec in out.incidents:
            by_id[rec.page_incident_id].append(rec)
    return by_id


async def _fetch_timelines(p: _Poll, kind: PageKind, page_id: int, by_id: dict[str, list[IncidentRec]],
                           states: dict, now: datetime, *, catch_up: list[str] = (),
                           out: list[IncidentRec] | None = None) -> list[IncidentRec]:
    """The full timeline of each incident that is new or changed (the lists only carry the latest update,
    or no text), plus a few of `catch_up` (stored ones still missing their timeline). An incident whose
    timeline failed within TIMELINE_RETRY is not asked again yet. Each timeline is also appended to `out`
    as it arrives, so a caller that gives up waiting keeps those it got. An unchanged poll opens no
    transaction here."""
    out = [] if out is None else out
    wanted = []
    if by_id:
        rows = await asyncio.to_thread(_load_incidents, p.engine, page_id, by_id)
        store = _store()
        for iid, recs in by_id.items():
            row = rows.get(iid)
            prev = store.to_state(row) if row is not None else None
            ch = merge(prev, recs, now)
            if prev is None or ch.new_updates or ch.state.status != prev.status or not prev.full_timeline:
                wanted.append(iid)
        wanted = wanted[:MAX_DETAILS_PER_POLL]
    wanted += [iid for iid in catch_up if iid not in wanted][:CATCH_UP_PER_POLL]

    def backing_off(iid: str) -> bool:
        st = states.get(kind.timeline_path(p.ps.host, iid))
        return bool(st and st.last_error and st.fetched_at and now - st.fetched_at < TIMELINE_RETRY)

    wanted = [iid for iid in wanted if not backing_off(iid)]
    sem = asyncio.Semaphore(DETAIL_CONCURRENCY)

    async def one(iid: str) -> None:
        path = kind.timeline_path(p.ps.host, iid)
        async with sem:
            try:
                ans = await p.get(path)
                got = kind.read(path, ans.body, ans.content_type, p.ctx)
            except FetchError as exc:
                p.timeline_failed[path] = cause(str(exc), p.url(path))
                return
            except ParseError as exc:
                p.timeline_failed[path] = str(exc)
                return
        p.timeline_ok.append(path)
        out.extend(r for r in got.incidents if r.page_incident_id == iid)

    await asyncio.gather(*(one(i) for i in wanted))
    return out


def _apply(p: _Poll, page_id, parsed, details, new_states, comps, first_poll, now, *, silent=False) -> None:
    """Merge and write everything this poll learnt, in one transaction (BEGIN IMMEDIATE): a crash or error
    before the commit leaves the store as it was."""
    res = p.result
    by_id = _group(parsed)
    for rec in details:
        by_id[rec.page_incident_id].append(rec)
    if (not by_id and not new_states and comps is None and not first_poll and not p.timeline_failed
            and not p.time_zone):
        page_state.record_success(p.store, page_id, now, p.retry_after, _outcome(p.result))  # nothing learnt
        res.unchanged = True
        return
    store = _store()
    from monitor.models import Page
    with transaction(p.engine) as s:
        # the page's row locked first: two polls of one page (a hand-run poll beside the service) apply one
        # after the other on every database (SQLite's BEGIN IMMEDIATE already does; on PostgreSQL the second
        # waits here, then reads what the first wrote), so neither fails nor queues a message twice
        page = s.get(Page, page_id, with_for_update=True)
        if comps is not None:
            store.save_components(s, page_id, comps.components)
        names = store.component_names(s, page_id) if (comps is not None or by_id) else {}
        rows = store.load_incidents(s, page_id, by_id)
        changes = []
        for iid, recs in by_id.items():
            row = rows.get(iid)
            ch = merge(store.to_state(row) if row is not None else None, recs, now, names)
            if ch.changed:
                changes.append(ch)
                res.new += row is None
                res.changed += row is not None
        res.queued = store.apply(s, page, changes, rows, rules=p.rules, notifiers=p.settings.notifiers,
                                 now=now, silent_resolved=first_poll, silent=silent,
                                 upload_tags=p.settings.upload_tags, surface_rules=p.settings.surface_rules,
                                 watched=p.settings.watched_surfaces(p.ps.name))
        store.save_states(s, page_id, new_states, now)
        store.save_timeline_states(s, page_id, p.timeline_ok, p.timeline_failed, now)
        page.kind = res.kind or page.kind
        page.time_zone = p.time_zone or page.time_zone
        page.first_poll_at = page.first_poll_at or now
        page.last_poll_at = page.last_success_at = now
        page.consecutive_failures = 0
        page.not_before = p.retry_after
        page.last_outcome = _outcome(res)
    res.unchanged = not changes


def _outcome(res: PageResult) -> str:
    return res.summary().split(": ", 1)[1]


def _record_failure(p: _Poll, page_id: int, now: datetime) -> None:
    """Count the failure and back off (see page_state.record_failure); warn once it has lasted."""
    res = p.result
    fails = page_state.record_failure(p.store, page_id, now, _outcome(res), p.ps.poll_interval, BACKOFF_CAP,
                                 p.retry_after)
    if fails >= WARN_AFTER_FAILURES:
        log.warning("page %s: %d polls in a row failed: %s", p.ps.name, fails, "; ".join(res.errors))


async def run_backfill(settings: Settings, ps: PageSettings, store, http, rules, *, since: datetime,
                       details: bool = False) -> PageResult:
    """Older incidents the page still offers, stored without notifying (history is not news): the page's
    kind fetches them with the fetch function it is given."""
    p = _Poll(settings, ps, store, http, rules)
    now = p.ctx.now
    page_id, stored_kind = await asyncio.to_thread(_page_row, p.engine, ps)
    name = ps.kind if ps.kind != "auto" else stored_kind
    if name is None:
        name = await _detect(p)
        if name is None:
            return p.result
    p.result.kind = name
    try:
        got = await page_kind(name).backfill(p.get, p.ctx, since, details=details)
    except ParseError as exc:
        p.result.errors.append(str(exc))
        return p.result
    p.result.sources_ok, p.result.errors = got.answered, p.result.errors + got.errors
    p.result.ok = bool(got.answered)
    if p.result.ok:
        await asyncio.to_thread(_apply, p, page_id, got.results, [], {}, None, False, now, silent=True)
        await asyncio.to_thread(_set_backfilled, p.engine, page_id, since)
    return p.result


async def poll_all(settings: Settings, store, rules, *, pages=None, force: bool = False) -> list[PageResult]:
    """Poll every page at once; one page's failure never stops the others. `store`: a db.Store (or an engine)."""
    targets = [settings.page(n) for n in pages] if pages else list(settings.pages)
    store = Store.of(store)
    async with client() as http:
        return list(await asyncio.gather(*(poll_page(settings, ps, store, http, rules, force=force)
                                           for ps in targets)))


def _known_or_created(p: _Poll):
    """p.known(), creating (or re-pointing) the page's row first when needed. Two processes creating it at
    once: the one whose INSERT loses reads the winner's row."""
    known = p.known()
    if known is None:  # first poll of this page, or its base_url changed: the ORM creates/updates the row
        from sqlalchemy.exc import IntegrityError

        try:
            with transaction(p.engine) as s:
                _store().get_page(s, p.ps.name, p.ps.base_url)
        except IntegrityError:
            pass
        known = p.known()
    return known


def _page_row(engine, ps: PageSettings) -> tuple[int, str | None]:
    with transaction(engine) as s:
        page = _store().get_page(s, ps.name, ps.base_url)
        return page.id, page.kind


def _load_incidents(engine, page_id: int, ids) -> dict:
    with transaction(engine) as s:
        return _store().load_incidents(s, page_id, ids)


def _set_backfilled(engine, page_id: int, since: datetime) -> None:
    from monitor.models import Page

    with transaction(engine) as s:
        s.get(Page, page_id).backfilled_since = since
