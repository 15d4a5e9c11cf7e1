"""Is "how long to wait" (monitor/estimate.py) calibrated on the real status.openai.com history?

    .venv/bin/python benchmarks/estimate_eval.py           # a table, then the JSON (under a second)

Time-ordered splits of tests/data/history/openai (Dec 2020 - Aug 2024), never peeking at the future:
  * held out: learn from the incidents that started before 2024-01-01, estimate those of 2024;
  * validation (the one parameters were chosen on): learn from those before 2023-01-01, estimate 2023;
  * rolling 2024 (how the monitor runs): learn from every incident resolved before the moment estimated.
Each incident of the estimated year is estimated at 10 minutes and at 1 hour after its first update, if it is
still open then (true end = its last "resolved" update, later than that moment). The estimate learns only
from incidents resolved before that moment. Maintenance counts neither as a case nor as an estimated incident.

Class keys, three ways (the estimated incident's keys come only from the updates posted by the moment):
  * "tags+surfaces": tags from monitor.tags.tag_incident (title, bodies, components) as "tag:<t>", and the
    broad-outage surfaces from monitor.surfaces.classify as "surface:<s>";
  * "tags+components": the same tags, and each affected component of the page ("This incident affected:
    API and ChatGPT") as "component:<name>", ChatGPT before API;
  * "tags+components+surfaces": tags, components, then surfaces: what the monitor uses (estimate.keys_of).
Impact and components of the estimated incident: as the history records them, the final ones (the CSVs keep
no earlier impact or component list), a small look ahead the monitor does not have.

Figures per split and moment:
  n          incidents estimated (open at the moment, and the estimate had enough cases)
  none       incidents open at the moment that got no estimate (too few cases)
  p90        share whose true end <= p90_at (target 85-95 %)
  median     share whose true end <= median_at (target 40-60 %)
  err        median over incidents of |ln(median_at - t) - ln(true end - t)|, both in seconds and at least
             60 s (t = the moment estimated)
  naive err  the same error for the naive estimate: first update + the median duration of all the incidents
             learnt from (statistics.median of first update -> last resolution, maintenance excluded), which
             ignores class and elapsed time; when it lands before t it counts as 60 s after t
  page err   the same for estimate() with no class (elapsed time only: all the page's survivors), to show
             what the class adds
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from monitor.estimate import Case, estimate, span  # noqa: E402
from monitor.tags import DEFAULT_RULES, tag_incident  # noqa: E402
from replay import load_history  # noqa: E402

UTC = timezone.utc
MOMENTS = (("10 min", timedelta(minutes=10)), ("1 h", timedelta(hours=1)))
SPLITS = (
    # name, learn from incidents started before, estimate incidents started in [from, until), rolling
    ("held out 2024", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC), None, False),
    ("validation 2023", datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 1, 1, tzinfo=UTC),
     datetime(2024, 1, 1, tzinfo=UTC), False),
    ("rolling 2024", None, datetime(2024, 1, 1, tzinfo=UTC), None, True),
)
MIN_REMAINING_S = 60.0

from monitor.surfaces import DEFAULT_SURFACE_RULES, classify as _classify  # noqa: E402

SURFACES = "monitor.surfaces.classify (built-in rules)"


COMPONENT_ORDER = ("ChatGPT", "API", "Playground", "Labs")


def surface_keys(title: str, bodies: list[str], components: tuple[str, ...]) -> list[str]:
    return [f"surface:{m.tag}" for m in _classify(DEFAULT_SURFACE_RULES, title, bodies, [(c, None) for c in components])]


def component_surface_keys(title: str, bodies: list[str], components: tuple[str, ...]) -> list[str]:
    """The product's keys (monitor.estimate.keys_of), most specific first: after the tags, the components,
    then the surfaces."""
    return component_keys(title, bodies, components) + surface_keys(title, bodies, components)


def component_keys(title: str, bodies: list[str], components: tuple[str, ...]) -> list[str]:
    return [f"component:{c}" for c in sorted(components, key=lambda c: (
        COMPONENT_ORDER.index(c) if c in COMPONENT_ORDER else len(COMPONENT_ORDER), c))]


KEY_SETS = {"tags+surfaces": surface_keys, "tags+components": component_keys,
            "tags+components+surfaces": component_surface_keys}


@dataclass(frozen=True)
class Incident:
    case: Case                      # started_at, ended_at (last resolution), impact, keys from all updates
    title: str
    components: tuple[str, ...]
    updates: tuple[tuple[datetime, str], ...]   # (at, body), oldest first
    extra: Callable[[str, list[str], tuple[str, ...]], list[str]]

    def keys_at(self, t: datetime) -> tuple[str, ...]:
        """Class keys from what the page showed at `t` (title, the updates posted by then, components)."""
        return class_keys(self.title, [b for at, b in self.updates if at <= t], self.components, self.extra)


def class_keys(title: str, bodies: list[str], components: tuple[str, ...], extra) -> tuple[str, ...]:
    """Tags first (the most specific), then the key set's own keys."""
    tags = [f"tag:{m.tag}" for m in tag_incident(DEFAULT_RULES, title, bodies, components)]
    return tuple(tags + extra(title, bodies, components))


def incidents(key_set: str = "tags+components", kind: str = "openai") -> list[Incident]:
    """The page's history as resolved, non-maintenance incidents with their keys, oldest first."""
    extra = KEY_SETS[key_set]
    out = []
    for inc in load_history(kind):
        if inc.impact == "maintenance":
            continue
        times = span((u.status, u.at) for u in inc.updates)
        if times is None:
            continue
        comps = tuple(name for _, name in inc.components)
        keys = class_keys(inc.title, [u.body for u in inc.updates], comps, extra)
        out.append(Incident(Case(times[0], times[1], inc.impact, frozenset(keys)), inc.title, comps,
                            tuple((u.at, u.body) for u in inc.updates), extra))
    return out


def _log_error(predicted_end: datetime, true_end: datetime, t: datetime) -> float:
    p = max((predicted_end - t).total_seconds(), MIN_REMAINING_S)
    a = max((true_end - t).total_seconds(), MIN_REMAINING_S)
    return abs(math.log(p) - math.log(a))


def evaluate(history: list[Incident], *, learn_before: datetime | None, test_from: datetime,
             test_until: datetime | None, offset: timedelta, rolling: bool = False, **kw) -> dict:
    """Figures (see the module docstring) for one split and one moment. `kw` goes to estimate()."""
    rows = []
    none = 0
    for inc in history:
        c = inc.case
        if c.started_at < test_from or (test_until and c.started_at >= test_until):
            continue
        t = c.started_at + offset
        if c.ended_at <= t:
            continue  # over before the moment: nothing to estimate
        learn = [h.case for h in history if h.case.ended_at <= t
                 and (rolling or h.case.started_at < learn_before)]
        est = estimate(learn, keys=inc.keys_at(t), impact=c.impact, started_at=c.started_at, now=t, **kw)
        if not est:
            none += 1
            continue
        naive_end = c.started_at + timedelta(seconds=statistics.median(
            (h.ended_at - h.started_at).total_seconds() for h in learn))
        page = estimate(learn, keys=(), impact=None, started_at=c.started_at, now=t, **kw)
        rows.append({
            "p90": c.ended_at <= est.p90_at, "median": c.ended_at <= est.median_at,
            "err": _log_error(est.median_at, c.ended_at, t),
            "naive": _log_error(naive_end, c.ended_at, t),
            "page": _log_error(page.median_at, c.ended_at, t) if page else None,
            "class": est.class_label,
        })
    n = len(rows)
    classes: dict[str, int] = {}
    for r in rows:
        classes[r["class"]] = classes.get(r["class"], 0) + 1
    pages = [r["page"] for r in rows if r["page"] is not None]
    return {
        "n": n, "none": none,
        "p90_coverage": round(sum(r["p90"] for r in rows) / n, 3) if n else None,
        "median_coverage": round(sum(r["median"] for r in rows) / n, 3) if n else None,
        "log_error": round(statistics.median(r["err"] for r in rows), 3) if n else None,
        "naive_log_error": round(statistics.median(r["naive"] for r in rows), 3) if n else None,
        "page_log_error": round(statistics.median(pages), 3) if pages else None,
        "classes": dict(sorted(classes.items(), key=lambda kv: -kv[1])),
    }


def run(key_set: str = "tags+components", history: list[Incident] | None = None, **kw) -> list[dict]:
    history = incidents(key_set) if history is None else history
    out = []
    for name, learn_before, test_from, test_until, rolling in SPLITS:
        for label, offset in MOMENTS:
            fig = evaluate(history, learn_before=learn_before, test_from=test_from, test_until=test_until,
                           offset=offset, rolling=rolling, **kw)
            out.append({"keys": key_set, "split": name, "at": label, **fig})
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def main() -> None:
    t0 = time.perf_counter()
    results = [r for key_set in KEY_SETS for r in run(key_set)]
    print(f"surfaces: {SURFACES}")
    head = (f"{'keys':<24} {'split':<16} {'at':>6} {'n':>4} {'none':>5} {'p90':>6} {'median':>7} {'err':>6} "
            f"{'naive err':>10} {'page err':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['keys']:<24} {r['split']:<16} {r['at']:>6} {r['n']:>4} {r['none']:>5} "
              f"{_pct(r['p90_coverage']):>6} {_pct(r['median_coverage']):>7} {r['log_error']:>6} "
              f"{r['naive_log_error']:>10} {r['page_log_error']:>9}")
    print(f"targets: p90 85-95 %, median 40-60 %, err < naive err   ({time.perf_counter() - t0:.1f} s)")
    print(json.dumps({"surfaces": SURFACES, "results": results}, indent=2))


if __name__ == "__main__":
    main()
