"""/metrics: the Prometheus text format from prometheus_client, with a registry of the service's own.

One collector reads the store once per scrape (one transaction: the verdict, each page's health and the
outbox agree with each other); poll counts are kept in the process, as the service polls. Every labelled
counter is present at 0 from the start, so `rate()` and `increase()` work from the first scrape."""
from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from sqlalchemy import func, select

from monitor import __version__, db, sources, status
from monitor.models import Outbox, Page, ProbeResult
from monitor.records import LOG_NOTIFIER


def list_paths(kind: str | None) -> tuple[str, ...]:
    """The list sources a page of this kind is polled through (none while its kind is not known yet)."""
    return sources.kind(kind).poll_paths if kind in sources.KINDS else ()


class PollCounts:
    """Polls and failed polls per page, fetches and failed fetches per page and source (the page's list
    sources, by path). Filled by the service after each poll; read by the collector."""

    def __init__(self):
        self.polls: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.fetches: dict[tuple[str, str], int] = {}
        self.fetch_failures: dict[tuple[str, str], int] = {}

    def observe(self, result) -> None:
        """Count one poll.PageResult (a skipped poll, one held back by a page's Retry-After, is no poll)."""
        if result.skipped:
            return
        page = result.page
        self.polls[page] = self.polls.get(page, 0) + 1
        if not result.ok:
            self.failures[page] = self.failures.get(page, 0) + 1
        for path in list_paths(result.kind):
            self.fetches[page, path] = self.fetches.get((page, path), 0) + 1
            if path not in result.sources_ok:
                self.fetch_failures[page, path] = self.fetch_failures.get((page, path), 0) + 1


class StoreCollector:
    """A prometheus_client collector: each scrape reads the store once."""

    def __init__(self, settings, engine, counts: PollCounts):
        self.settings, self.engine, self.counts = settings, engine, counts

    def read(self):
        with db.transaction(self.engine) as s:
            report = status.from_session(s, self.settings)
            outbox = dict(((n, st), c) for n, st, c in s.execute(
                select(Outbox.notifier, Outbox.state, func.count()).where(Outbox.state.in_(("pending", "failed")))
                .group_by(Outbox.notifier, Outbox.state)))
            kinds = dict(s.execute(select(Page.name, Page.kind)).all())
            probes = probe_outcomes(s, self.settings)
        return report, outbox, kinds, probes

    def collect(self):
        report, outbox, kinds, probes = self.read()
        now = report.now
        yield InfoMetricFamily("monitor", "The monitor's version.", value={"version": __version__})
        yield GaugeMetricFamily("monitor_verdict", "The verdict as `monitor status` exits: 0 troubleshoot "
                                "locally, 1 wait (minor), 2 wait (major), 3 unknown.", value=report.verdict.exit_code)
        incidents = report.verdict.incidents
        yield GaugeMetricFamily("monitor_upload_incidents_open", "Upload-related incidents open on the pages.",
                                value=sum(1 for i in incidents if i.get("upload", True)))
        broad = GaugeMetricFamily("monitor_broad_outages_open",
                                  "Open broad outages of each watched surface (uploads fail too).", labels=["surface"])
        for surface in self.settings.known_surfaces:
            broad.add_metric([surface], sum(1 for i in incidents if surface in i.get("broad", ())))
        yield broad
        last = GaugeMetricFamily("monitor_last_successful_poll_timestamp_seconds",
                                 "When each page last answered a poll (Unix time).", labels=["page"])
        fresh = GaugeMetricFamily("monitor_page_fresh", "1 while the page's data is fresh enough for a verdict.",
                                  labels=["page"])
        failing = GaugeMetricFamily("monitor_page_consecutive_failed_polls",
                                    "Polls of the page that failed since its last good one.", labels=["page"])
        for p in report.health:
            if p.last_success_at:
                last.add_metric([p.name], p.last_success_at.timestamp())
            fresh.add_metric([p.name], 1 if p.fresh(now) else 0)
            failing.add_metric([p.name], p.consecutive_failures)
        yield from (last, fresh, failing)

        c = self.counts
        polls = CounterMetricFamily("monitor_polls", "Polls of each page by this process.", labels=["page"])
        failed = CounterMetricFamily("monitor_poll_failures", "Polls of each page in which no source answered.",
                                     labels=["page"])
        fetches = CounterMetricFamily("monitor_source_fetches", "Fetches of each list source of each page.",
                                      labels=["page", "source"])
        fetch_failed = CounterMetricFamily("monitor_source_fetch_failures",
                                           "Fetches of each list source that failed (HTTP, parse, deadline).",
                                           labels=["page", "source"])
        for ps in self.settings.pages:
            polls.add_metric([ps.name], c.polls.get(ps.name, 0))
            failed.add_metric([ps.name], c.failures.get(ps.name, 0))
            kind = ps.kind if ps.kind != "auto" else kinds.get(ps.name)
            for path in list_paths(kind):
                fetches.add_metric([ps.name, path], c.fetches.get((ps.name, path), 0))
                fetch_failed.add_metric([ps.name, path], c.fetch_failures.get((ps.name, path), 0))
        yield from (polls, failed, fetches, fetch_failed)

        messages = GaugeMetricFamily("monitor_outbox_messages", "Messages pending delivery or given up on, "
                                     "per notifier.", labels=["notifier", "state"])
        notifiers = [n.name for n in self.settings.notifiers] or [LOG_NOTIFIER]
        for name in dict.fromkeys(notifiers + [n for n, _ in outbox]):
            for state in ("pending", "failed"):
                messages.add_metric([name, state], outbox.get((name, state), 0))
        yield messages

        if probes is not None:
            outcomes = CounterMetricFamily("monitor_probe_results", "Probes of the Files API by result: ok, or "
                                           "whose fault the failure was (openai, user, local).", labels=["result"])
            for outcome, n in sorted(probes.items()):
                outcomes.add_metric([outcome], n)
            yield outcomes
            probe = report.probe
            yield GaugeMetricFamily("monitor_probe_consecutive_failures", "Probes failing on OpenAI's side in a "
                                    "row now (the early warning goes out at failures_to_warn).",
                                    value=probe.consecutive_failures if probe else 0)
            if probe and probe.last_at:
                yield GaugeMetricFamily("monitor_probe_last_result_timestamp_seconds",
                                        "When the last probe's result was known (Unix time).",
                                        value=probe.last_at.timestamp())


def probe_outcomes(session, settings) -> dict[str, int] | None:
    """Stored probes per result (ok, or whose fault a failure was); None without `[probe]` (then no
    monitor_probe_* metric). Every result is present, at 0 until it happens."""
    if settings.probe is None:
        return None
    counts = dict.fromkeys(PROBE_RESULTS, 0)
    for outcome, cls, n in session.execute(select(ProbeResult.outcome, ProbeResult.failure_class, func.count())
                                           .group_by(ProbeResult.outcome, ProbeResult.failure_class)):
        key = "ok" if outcome == "ok" else (cls or "unknown")
        counts[key] = counts.get(key, 0) + n
    return counts


PROBE_RESULTS = ("ok", "openai", "user", "local")


def registry(settings, engine, counts: PollCounts):
    """A registry of the service's own (not the process-wide default, which holds Python's GC metrics)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector(settings, engine, counts))
    return reg
