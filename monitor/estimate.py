"""Pure: how long an open incident may still last, from the page's own resolved incidents.

No I/O and no database: the caller reads the page's resolved incidents from the store as `Case`s and asks
`estimate()` about one open incident at the time `now`.

What it computes
    Durations run from an incident's first update to its last "resolved" update (a reopened incident counts
    to its last resolution; postmortems after the resolution do not count). Maintenance never counts.
    Of the comparable cases, only those that lasted at least as long as the open incident has so far (the
    survivors) say anything about it: their remaining times (duration - elapsed) give the estimate, so an
    incident open 3 hours is compared with the incidents that lasted 3 hours or more, not with all of them.

Comparable: the class ladder, most specific first
    1. each of the caller's keys (e.g. "tag:file-upload", "surface:chatgpt"; most specific first) with the
       same impact;
    2. each key with any impact;
    3. the same impact;
    4. every incident of the page.
    The first class with at least FLOOR survivors wins. When even the whole page has fewer, there is no
    estimate, and `NoEstimate.reason` says why.

Floor: FLOOR = 10 survivors
    The 90th percentile below is the k-th smallest of n remaining times with k = ceil(0.9 (n + 1)); that is
    a real case (k <= n) only from n = 9 on; with n = 10 it is the largest of ten. Below that there is no
    honest "9 in 10" figure to give. The floor was chosen on the validation split of
    benchmarks/estimate_eval.py (learn from the OpenAI history before 2023, estimate 2023, keys = tags and
    affected components): floors 8 and 10 keep both moments inside the targets (p90 95 % and 91 %, median
    44 % and 58 % at 10 min and 1 h); 5 gives a median coverage of 61 % at 1 h, 12 to 20 give 66-68 %
    (they push incidents down to broad classes), and 30 leaves 2023 without any estimate.

Key with any impact (rung 2)
    Kept: on the validation split it changes neither the p90 coverage nor the error (median coverage 44 %
    instead of 49 % at 10 min, both inside), and it answers a no-impact ChatGPT incident from ChatGPT
    incidents rather than from no-impact incidents of any kind, a thin class with many incidents only
    posted once they were over.

Quantiles: predictive order statistics
    For n survivors sorted by remaining time r(1) <= ... <= r(n), the q-quantile is r(k) with
    k = ceil(q (n + 1)), capped at n (median: q = 0.5; "9 in 10": q = 0.9). If the next incident is like
    the n past ones (exchangeable), it ends before r(k) with probability k / (n + 1) >= q: the plain
    nearest-rank quantile (k = ceil(q n)) is the q-quantile of the past cases, and gives a new incident
    less than q, by a margin that matters for small n (n = 10: 9/11 = 82 % instead of 90 %). No
    interpolation: every figure is the remaining time of one real past incident, and a test can compute
    it by hand.

Times are shown rounded up (`duration_words`): "9 in 10 within 3 h 10 min" never shortens the figure.
The wording reports the past ("half were over within"); it never promises ("will be resolved by").
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Sequence

from monitor.records import iso_z
from monitor.verdict import age_words

FLOOR = 10              # fewest survivors a class needs to give an estimate (see above)
MEDIAN, P90 = 50, 90    # the two quantiles, in percent

_SURFACE_NOUNS = {"chatgpt": "ChatGPT outages", "api": "API outages"}
_IMPACT_ADJECTIVES = {"none": "no-impact", "minor": "minor", "major": "major", "critical": "critical"}


@dataclass(frozen=True, slots=True)
class Case:
    """One resolved incident of the page: first update, last resolution, impact, class keys."""
    started_at: datetime
    ended_at: datetime
    impact: str
    keys: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Estimate:
    """How long comparable past incidents went on after lasting as long as this one has (now - started_at)."""
    median_at: datetime         # now + median remaining time (aware UTC)
    p90_at: datetime            # now + 90th-percentile remaining time
    cases: int                  # survivors in the class used
    class_label: str            # e.g. "major ChatGPT outages", "major incidents", "incidents of this page"
    since: datetime             # the earliest start among those cases
    median_s: float             # remaining time, seconds
    p90_s: float

    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class NoEstimate:
    """Too few comparable incidents lasted this long. Falsy, so `if est:` reads "is there an estimate"."""
    cases: int                  # survivors among all the incidents of the page
    reason: str                 # e.g. "only 4 comparable incidents lasted this long"

    def __bool__(self) -> bool:
        return False


def span(updates: Iterable[tuple[str, datetime]]) -> tuple[datetime, datetime] | None:
    """(first update, last "resolved" update) of an incident from its (status, at) updates, in any order;
    None when it was never resolved. A reopened incident ends at its last resolution."""
    first = last = None
    for status, at in updates:
        if at is None:
            continue
        if first is None or at < first:
            first = at
        if status == "resolved" and (last is None or at > last):
            last = at
    if first is None or last is None:
        return None
    return first, last


def class_label(key: str | None, impact: str | None, page_label: str = "this page") -> str:
    """A person's name for a class: ("surface:chatgpt", "major") -> "major ChatGPT outages",
    ("tag:file-upload", None) -> "file-upload incidents", ("component:ChatGPT", "minor") -> "minor ChatGPT
    incidents", (None, "major") -> "major incidents",
    (None, None) -> "incidents of this page"."""
    if key is None and impact is None:
        return f"incidents of {page_label}"
    if key is None:
        noun = "incidents"
    else:
        kind, _, name = key.partition(":")
        if kind == "surface" and name in _SURFACE_NOUNS:
            noun = _SURFACE_NOUNS[name]
        elif kind in ("surface", "tag", "component") and name:
            noun = f"{name} incidents"
        else:
            noun = f"{key} incidents"
    if impact is None:
        return noun
    return f"{_IMPACT_ADJECTIVES.get(impact, impact)} {noun}"


def _quantile(sorted_values: Sequence[float], percent: int) -> float:
    """r(k), k = ceil(percent (n + 1) / 100) capped at n: the predictive order statistic (module docstring)."""
    n = len(sorted_values)
    k = min(n, -(-percent * (n + 1) // 100))
    return sorted_values[k - 1]


def estimate(cases: Iterable[Case], *, keys: Sequence[str] = (), impact: str | None, started_at: datetime,
             now: datetime, page_label: str = "this page", floor: int = FLOOR) -> Estimate | NoEstimate:
    """How long the open incident (`impact`, class `keys` most specific first, first update `started_at`)
    may still last at `now`, from the page's resolved `cases`. `impact` None (not known) skips the rungs
    that need it.

    Cases that are maintenance, lack a time, end before they start or end after `now` (not known yet) are
    left out. Returns an `Estimate`, or a `NoEstimate` (falsy) with the reason."""
    elapsed = max((now - started_at).total_seconds(), 0.0)
    # Survivors first: every class below is a subset of them, and most past incidents are shorter.
    survivors: list[tuple[float, Case]] = []
    known = 0
    for c in cases:
        if c.impact == "maintenance" or c.started_at is None or c.ended_at is None:
            continue
        if c.ended_at < c.started_at or c.ended_at > now:
            continue
        known += 1
        duration = (c.ended_at - c.started_at).total_seconds()
        if duration >= elapsed:
            survivors.append((duration - elapsed, c))

    ladder: list[tuple[str | None, str | None]] = [(k, impact) for k in keys] if impact is not None else []
    ladder += [(k, None) for k in keys]
    ladder += [(None, impact)] if impact is not None else []
    ladder.append((None, None))
    for key, imp in ladder:
        chosen = [(r, c) for r, c in survivors
                  if (key is None or key in c.keys) and (imp is None or c.impact == imp)]
        if len(chosen) >= floor:
            remaining = sorted(r for r, _ in chosen)
            med, p90 = _quantile(remaining, MEDIAN), _quantile(remaining, P90)
            return Estimate(
                median_at=now + timedelta(seconds=med), p90_at=now + timedelta(seconds=p90),
                cases=len(chosen), class_label=class_label(key, imp, page_label),
                since=min(c.started_at for _, c in chosen), median_s=med, p90_s=p90)

    n = len(survivors)
    if known < floor:
        what = "resolved incident" if known == 1 else "resolved incidents"
        reason = f"only {known} {what} of {page_label} to compare with" if known else \
            f"no resolved incident of {page_label} to compare with"
    else:
        what = "comparable incident" if n == 1 else "comparable incidents"
        reason = f"only {n} {what} lasted this long" if n else "no comparable incident lasted this long"
    return NoEstimate(cases=n, reason=reason)


def duration_words(seconds: float) -> str:
    """`age_words`, rounded up to the unit it shows instead of down: an upper figure is never shortened
    (61 min 1 s -> "1 h 2 min", 1 d 2 h 1 s -> "1 d 3 h")."""
    s = -(-max(seconds, 0) // 1)
    if s >= 120:
        s = -(-s // 60) * 60
    if s >= 24 * 3600:
        s = -(-s // 3600) * 3600
    return age_words(s)


def to_json(est: Estimate | NoEstimate | None) -> dict | None:
    """`expected_resolution` of `status --json`: {"median_at", "p90_at", "cases", "class"}, or None.
    Times in UTC with a Z, whole seconds rounded up."""
    if not est:
        return None
    return {"median_at": iso_z(_ceil_second(est.median_at)), "p90_at": iso_z(_ceil_second(est.p90_at)),
            "cases": est.cases, "class": est.class_label}


def _ceil_second(t: datetime) -> datetime:
    return t.replace(microsecond=0) + timedelta(seconds=1) if t.microsecond else t


def sentence(est: Estimate | NoEstimate) -> str:
    """The line under the verdict's reason. Reports what past incidents did; promises nothing."""
    if not est:
        return f"No estimate: {est.reason}."
    return (f"Similar incidents ({est.cases} {est.class_label} since {est.since:%Y-%m}): "
            f"half were over within {duration_words(est.median_s)} more, "
            f"9 in 10 within {duration_words(est.p90_s)}.")


# Components of the 2020-24 history name the product; most specific first when an incident lists several.
_COMPONENT_ORDER = ("ChatGPT", "API", "Playground", "Labs")


def keys_of(tags: Iterable[str], surfaces: Iterable[str], components: Iterable[str]) -> list[str]:
    """An incident's class keys, most specific first, in the order benchmarks/estimate_eval.py calibrates:
    its tags, its components, then the surfaces it takes down broadly. (Components before surfaces: on the
    validation year both orders meet the targets, this one slightly better, 44.4 % against 43.8 % median
    coverage at 10 min with the same error.)"""
    comps = sorted(set(c for c in components if c), key=lambda c: (
        _COMPONENT_ORDER.index(c) if c in _COMPONENT_ORDER else len(_COMPONENT_ORDER), c))
    return ([f"tag:{t}" for t in sorted(set(tags))] + [f"component:{c}" for c in comps]
            + [f"surface:{s}" for s in sorted(set(surfaces))])
