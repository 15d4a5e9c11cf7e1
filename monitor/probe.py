"""The opt-in probe of the OpenAI Files API: `monitor run` (on the leader) uploads a tiny file, reads it back
and deletes it every `[probe] interval` seconds, records the outcome, and gives an early warning through the
outbox when uploads fail on OpenAI's side before the status page says so.

* Client: the httpx the service already has loaded, not the openai SDK (a second HTTP stack and models for
  the whole API, imported and kept in memory by a daemon that needs four endpoints); this module is imported
  only when `[probe]` is configured. No retries: one request per step, each under a timeout of
  min(30 s, interval).
* The key goes in the Authorization header to `base_url` only: redirects are not followed, and nothing the
  probe stores, logs or sends holds it (error bodies are never kept, only their `error.code`/`type`).
* Whose fault a failure is: `openai` (5xx; a 429 that is load shedding; a timeout or connection failure
  while the status page answers from here), `user` (401/403 bad key, 429 quota/rate limit/billing, 400 and
  other refusals of our request: logged once as a configuration problem, never a warning), `local` (no answer
  from the API and none from the status page either: our own network).
* Files: named `openai-status-monitor-probe-<uuid>.txt`; deleted in every path (failure, cancellation at
  shutdown); leftovers of a killed daemon (by name prefix) are deleted before the first probe.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx
from sqlalchemy import select

from monitor.db import transaction
from monitor.models import Incident, ProbeOutage, ProbeResult, Tag
from monitor.records import iso_z
from monitor.sources.http import USER_AGENT

log = logging.getLogger("monitor.probe")

PREFIX = "openai-status-monitor-probe-"
CONTENT = b"openai-status-monitor probe: safe to delete\n"
STEPS = ("upload", "retrieve", "content", "delete")
CLEANUP_TIMEOUT = 2.0       # seconds the deletion after a failure or at shutdown may take (the service waits 3 s)
PROBE_TAG = "file-upload"   # routing: the early warning is an `opened` event of this tag, its all-clear `resolved`
PROBE_IMPACT = "minor"      # notifier filters see it as a minor-impact upload incident (status exits 1)
# a 429 with one of these in error.code/type is about our account, not OpenAI's capacity
ACCOUNT_LIMITS = ("insufficient_quota", "rate_limit_exceeded", "billing_hard_limit_reached", "billing_not_active",
                  "access_terminated", "requests", "tokens")
_WORD = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ProbeFailed(Exception):
    def __init__(self, step: str, cls: str, words: str, status: int | None = None):
        super().__init__(f"{step}: {words}")
        self.step, self.cls, self.words, self.status = step, cls, words, status


@dataclass
class ProbeRun:
    started_at: datetime
    ok: bool = False
    cls: str | None = None          # openai | user | network (decided by the store: openai or local)
    step: str | None = None
    detail: str | None = None
    ms: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        steps = ", ".join(f"{s} {self.status.get(s, '-')} in {self.ms[s]} ms" for s in STEPS if s in self.ms)
        return ("ok: " if self.ok else f"failed: {self.detail}; ") + (steps or "no step answered")


def _error_words(body: bytes) -> tuple[str | None, str | None]:
    """(error.code, error.type) of an OpenAI error body, each only when it is a plain identifier (so that a
    message, which may quote part of the key, is never kept)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return None, None
    code, kind = err.get("code"), err.get("type")
    return (code if isinstance(code, str) and _WORD.match(code) else None,
            kind if isinstance(kind, str) and _WORD.match(kind) else None)


def classify(step: str, status: int, body: bytes) -> tuple[str, str]:
    """Whose fault an HTTP error answer is, and a one-line description: ("openai" | "user", words)."""
    code, kind = _error_words(body)
    named = " ".join(dict.fromkeys(w for w in (code, kind) if w))
    words = f"HTTP {status}" + (f" {named}" if named else "")
    if status >= 500:
        return "openai", words
    if status == 429:
        if any(w in ACCOUNT_LIMITS or "quota" in w or "billing" in w for w in (code, kind) if w):
            return "user", words + " (our account's limit)"
        return "openai", words + " (load shedding)"     # e.g. {"status": "come back later"}
    if status in (401, 403):
        return "user", words + " (the key is refused)"
    if status == 404 and step != "upload":
        return "openai", words + " (the file just uploaded is missing)"
    return "user", words + " (our request is refused)"


def _network_words(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return f"no answer within {timeout:g} s"
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}" + (f": {text}" if text else "")


class Prober:
    def __init__(self, settings, engine):
        self.settings, self.engine, self.ps = settings, engine, settings.probe
        self.key = self.ps.api_key(settings.source)
        self.timeout = min(30.0, self.ps.interval)
        self.http = httpx.AsyncClient(
            base_url=self.ps.base_url, follow_redirects=False, trust_env=False,
            timeout=httpx.Timeout(self.timeout),
            headers={"Authorization": f"Bearer {self.key}", "User-Agent": USER_AGENT})
        self.clean_needed = True       # leftovers of an earlier run (or of a deletion that failed) may exist
        self.content_refused = False   # the API does not serve the content of user_data files
        self.problem_logged: str | None = None

    async def close(self) -> None:
        await self.http.aclose()

    def scrub(self, text: str) -> str:
        return text.replace(self.key, "***")

    # -- HTTP ----------------------------------------------------------------------------------------------

    async def _call(self, run: ProbeRun | None, step: str, method: str, path: str, *, timeout: float | None = None,
                    refused_ok: bool = False, **kw) -> httpx.Response:
        t = timeout or self.timeout
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(t):
                r = await self.http.request(method, path, **kw)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            if run is not None:
                run.ms[step] = round((time.monotonic() - t0) * 1000)
            raise ProbeFailed(step, "network", self.scrub(_network_words(exc, t))) from None
        if run is not None:
            run.ms[step], run.status[step] = round((time.monotonic() - t0) * 1000), r.status_code
        if r.is_success or (refused_ok and r.status_code == 400):
            return r
        cls, words = classify(step, r.status_code, r.content[:65536])
        raise ProbeFailed(step, cls, words, r.status_code)

    @staticmethod
    def _object(r: httpx.Response, step: str) -> dict:
        try:
            data = r.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ProbeFailed(step, "openai", f"HTTP {r.status_code} with a body that is not a JSON object",
                              r.status_code)
        return data

    async def _probe_files(self, timeout: float | None = None) -> list[tuple[str, str]]:
        """(id, filename) of every probe file on the account (user_data files; follows `has_more`)."""
        out, after = [], None
        for _ in range(20):
            params = {"purpose": "user_data", **({"after": after} if after else {})}
            data = self._object(await self._call(None, "list", "GET", "/files", params=params, timeout=timeout),
                                "list")
            items = data.get("data") if isinstance(data.get("data"), list) else []
            for f in items:
                if isinstance(f, dict) and str(f.get("filename", "")).startswith(PREFIX) and f.get("id"):
                    out.append((str(f["id"]), str(f["filename"])))
            if not data.get("has_more") or not items or not isinstance(items[-1], dict):
                break
            after = items[-1].get("id")
        return out

    async def clean_up(self, *, name: str | None = None, timeout: float | None = None) -> int:
        """Delete the probe's files left on the account (only the one named `name` when given)."""
        gone = 0
        for fid, fname in await self._probe_files(timeout):
            if name is None or fname == name:
                await self._call(None, "delete", "DELETE", f"/files/{fid}", timeout=timeout)
                gone += 1
        return gone

    async def _delete_after(self, file_id: str | None, name: str) -> None:
        """The deletion in the failure and cancellation paths: the file by its id, or, when the upload got no
        answer (it may have arrived all the same), by its name. A file that may remain is deleted by the prefix
        clean-up before the next probe (and at the next start)."""
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                if file_id:
                    await self._call(None, "delete", "DELETE", f"/files/{file_id}", timeout=CLEANUP_TIMEOUT)
                else:
                    await self.clean_up(name=name, timeout=CLEANUP_TIMEOUT)
        except (ProbeFailed, TimeoutError) as exc:
            self.clean_needed = True
            log.warning("probe: could not delete the probe file %s: %s", file_id or name,
                        exc if isinstance(exc, ProbeFailed) else f"no answer within {CLEANUP_TIMEOUT:g} s")

    # -- one probe -----------------------------------------------------------------------------------------

    async def probe(self) -> ProbeRun:
        """Upload, read back, delete. Never raises for the API's answers: they are in the result."""
        if self.clean_needed:
            try:
                gone = await self.clean_up()
                self.clean_needed = False
                if gone:
                    log.info("probe: deleted %d leftover probe file(s)", gone)
            except ProbeFailed as exc:
                log.info("probe: cannot list leftover probe files yet: %s", exc)
        run = ProbeRun(started_at=datetime.now(timezone.utc))
        name = f"{PREFIX}{uuid.uuid4()}.txt"
        file_id, upload_sent = None, False
        try:
            upload_sent = True
            r = await self._call(run, "upload", "POST", "/files", data={"purpose": "user_data"},
                                 files={"file": (name, CONTENT, "text/plain")})
            obj = self._object(r, "upload")
            if not isinstance(obj.get("id"), str) or not obj["id"]:
                raise ProbeFailed("upload", "openai", "the answer names no file id", r.status_code)
            file_id = obj["id"]
            obj = self._object(await self._call(run, "retrieve", "GET", f"/files/{file_id}"), "retrieve")
            if obj.get("id") != file_id:
                raise ProbeFailed("retrieve", "openai", "the answer is about another file", run.status["retrieve"])
            if not self.content_refused:
                r = await self._call(run, "content", "GET", f"/files/{file_id}/content", refused_ok=True)
                if r.status_code == 400:    # not served for this purpose: not an outage; not asked again
                    self.content_refused = True
                    log.info("probe: the API does not serve the content of user_data files; "
                             "probes check upload, metadata and delete")
                elif r.content != CONTENT:
                    raise ProbeFailed("content", "openai", "the content differs from what was uploaded",
                                      r.status_code)
            obj = self._object(await self._call(run, "delete", "DELETE", f"/files/{file_id}"), "delete")
            if obj.get("deleted") is not True:
                raise ProbeFailed("delete", "openai", "the file was not deleted", run.status["delete"])
            file_id = None
            run.ok = True
        except ProbeFailed as exc:
            run.cls, run.step, run.detail = exc.cls, exc.step, str(exc)
        finally:
            if file_id or (upload_sent and "upload" not in run.status):
                await self._delete_after(file_id, name)
        return run

    async def run_once(self) -> int:
        """One probe, recorded; returns the number of messages queued."""
        run = await self.probe()
        queued, cls = record(self.settings, self.engine, run)
        if run.ok:
            self.problem_logged = None
            log.info("probe %s", run.summary())
        elif cls == "user":
            if self.problem_logged != run.detail:
                log.warning("probe: configuration problem, no early warning while it lasts: %s", run.summary())
                self.problem_logged = run.detail
            else:
                log.debug("probe %s", run.summary())
        else:
            log.warning("probe %s%s", run.summary(), "" if cls == "openai" else
                        " (the status page does not answer from here either: a local network problem)")
        return queued


# ------------------------------------------------------------------------------------------------ the store

def record(settings, engine, run: ProbeRun, now: datetime | None = None) -> tuple[int, str | None]:
    """Store one probe's result and move the outage it belongs to; queue the early warning or its all-clear.
    One transaction. Returns (messages queued, the failure's class: openai | user | local | None)."""
    from monitor import queries
    from monitor.reader import Reader

    now = now or datetime.now(timezone.utc)
    with transaction(engine) as s:
        incidents, health = queries.status_inputs(Reader(connection=s.connection()), settings)
        cls = run.cls
        if cls == "network":
            answers = any(p.fresh(now) for p in health)
            cls = "openai" if answers else "local"
            run.detail += (" (the status page answers from here)" if answers
                           else " (the status page does not answer either)")
        s.add(ProbeResult(started_at=run.started_at, finished_at=now, outcome="ok" if run.ok else "failed",
                          failure_class=cls, step=run.step, detail=run.detail,
                          **{f"{st}_ms": run.ms.get(st) for st in STEPS},
                          **{f"{st}_status": run.status.get(st) for st in STEPS}))
        outage = s.scalar(select(ProbeOutage).where(ProbeOutage.ended_at.is_(None))
                          .order_by(ProbeOutage.id.desc()).limit(1))
        queued = 0
        if run.ok:
            if outage is not None:
                outage.ended_at, outage.consecutive = run.started_at, 0
                if outage.warned_at and not incidents and not _page_posted(s, outage.first_failure_at, settings.upload_tags):
                    outage.all_clear = True
                    queued = _queue(s, settings, outage, "resolved", now)
        elif cls == "openai":
            if outage is None:
                outage = ProbeOutage(first_failure_at=run.started_at, last_failure_at=run.started_at,
                                     consecutive=0, failures=0, statuses="", all_clear=False)
                s.add(outage)
            outage.consecutive += 1
            outage.failures += 1
            outage.last_failure_at, outage.detail = run.started_at, run.detail
            seen = [x for x in outage.statuses.split(",") if x]
            status = run.status.get(run.step or "")
            if status and str(status) not in seen and len(seen) < 10:
                outage.statuses = ",".join(seen + [str(status)])
            if outage.consecutive >= settings.probe.failures_to_warn and not outage.warned_at and not incidents:
                s.flush()
                outage.warned_at = now
                queued = _queue(s, settings, outage, "opened", now)
        elif outage is not None:        # our key, our request or our network: says nothing about OpenAI
            outage.consecutive = 0
    return queued, cls


def _page_posted(s, since: datetime, upload_tags) -> bool:
    """Did the page post an upload-related incident since the outage began (open or already resolved)?"""
    return s.scalar(select(Incident.id).where(
        Incident.first_seen_at >= since,
        Incident.id.in_(select(Tag.incident_id).where(Tag.tag.in_(upload_tags)))).limit(1)) is not None


def _queue(s, settings, outage: ProbeOutage, event: str, now: datetime) -> int:
    from monitor.notify.outbox import queue_message

    return queue_message(s, incident_id=None, key=f"probe:{outage.id}:{event}", event=event, tags={PROBE_TAG},
                         impact=PROBE_IMPACT, notifiers=settings.notifiers, now=now,
                         upload_tags=settings.upload_tags, body=lambda: payload(outage, event, now))


def payload(outage: ProbeOutage, event: str, now: datetime) -> dict:
    """What the early warning (event "opened") or its all-clear ("resolved") says; rendered by notify.render."""
    return {"kind": "probe", "event": event, "page": "openai", "id": f"probe-{outage.id}",
            "title": "Uploads to the OpenAI Files API are failing from here", "tags": [PROBE_TAG],
            "impact": PROBE_IMPACT, "status": "resolved" if event == "resolved" else "investigating",
            "started_at": iso_z(outage.first_failure_at),
            "resolved_at": iso_z(outage.ended_at) if event == "resolved" else None,
            "probe": {"failures": outage.failures, "detail": outage.detail,
                      "statuses": [int(x) for x in outage.statuses.split(",") if x], "at": iso_z(now)}}
